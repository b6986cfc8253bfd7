//! The request planner: a device's points become as few read requests as the limits
//! allow (adjacent points of one kind joined across gaps of at most `max_gap` unused
//! registers or bits, at most `max_registers` registers or `max_bits` bits per request).
//! A device that refuses a joined request with exception 0x02 (illegal data address:
//! the span covers addresses it does not have) gets that request split in two, and the
//! split is kept for every later poll; a single point refused stays one request whose
//! point reports the error.

use super::config::RegisterKind;

/// Where a point sits, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Table.
    pub kind: RegisterKind,
    /// First address.
    pub address: u16,
    /// Registers (or bits).
    pub count: u16,
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Table (function 1, 2, 3 or 4).
    pub kind: RegisterKind,
    /// First address read.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indexes of the points served, by address.
    pub points: Vec<usize>,
}

/// The limits of one bus.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unused registers/bits a request may span between two points.
    pub max_gap: u16,
    /// Registers per request.
    pub max_registers: u16,
    /// Bits per request.
    pub max_bits: u16,
}

fn end(s: &Span) -> u32 {
    u32::from(s.address) + u32::from(s.count)
}

/// The requests reading `spans` (indexes into `spans` in each request).
pub fn plan(spans: &[Span], limits: Limits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].kind, spans[i].address, spans[i].count));
    let mut out: Vec<ReadRequest> = Vec::new();
    for i in order {
        let s = &spans[i];
        let max = u32::from(if s.kind.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(last) = out.last_mut() {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let new_end = last_end.max(end(s));
            if last.kind == s.kind
                && u32::from(s.address) <= last_end + u32::from(limits.max_gap)
                && new_end - u32::from(last.start) <= max
            {
                last.count = (new_end - u32::from(last.start)) as u16;
                last.points.push(i);
                continue;
            }
        }
        out.push(ReadRequest {
            kind: s.kind,
            start: s.address,
            count: s.count,
            points: vec![i],
        });
    }
    out
}

/// Split request `index` of `requests` in two (by its points) after the device refused
/// it with an illegal-address exception. Returns `false` for a single-point request,
/// which cannot be split (that point itself is refused).
pub fn split(requests: &mut Vec<ReadRequest>, index: usize, spans: &[Span]) -> bool {
    let request = &requests[index];
    if request.points.len() < 2 {
        return false;
    }
    let half = request.points.len() / 2;
    let make = |points: &[usize]| {
        let start = points.iter().map(|&p| spans[p].address).min().unwrap_or(0);
        let stop = points.iter().map(|&p| end(&spans[p])).max().unwrap_or(0);
        ReadRequest {
            kind: request.kind,
            start,
            count: (stop - u32::from(start)) as u16,
            points: points.to_vec(),
        }
    };
    let first = make(&request.points[..half]);
    let second = make(&request.points[half..]);
    requests[index] = first;
    requests.insert(index + 1, second);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterKind::*;

    fn span(kind: RegisterKind, address: u16, count: u16) -> Span {
        Span {
            kind,
            address,
            count,
        }
    }

    const LIMITS: Limits = Limits {
        max_gap: 2,
        max_registers: 125,
        max_bits: 2000,
    };

    #[test]
    fn adjacent_points_of_one_kind_share_a_request() {
        let spans = [
            span(Holding, 0, 2),
            span(Input, 0, 1),
            span(Holding, 2, 1),
            span(Holding, 5, 4),  // gap of 2 after 2..3: joined
            span(Holding, 12, 1), // gap of 3: a new request
            span(Coil, 0, 1),
            span(Coil, 1, 1),
        ];
        let r = plan(&spans, LIMITS);
        let summary: Vec<_> = r
            .iter()
            .map(|q| (q.kind, q.start, q.count, q.points.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Coil, 0, 2, vec![5, 6]),
                (Input, 0, 1, vec![1]),
                (Holding, 0, 9, vec![0, 2, 3]),
                (Holding, 12, 1, vec![4]),
            ]
        );
    }

    #[test]
    fn requests_stay_within_the_protocol_limits() {
        let regs: Vec<Span> = (0..100).map(|i| span(Holding, i * 4, 4)).collect();
        let r = plan(&regs, LIMITS);
        assert!(r.iter().all(|q| q.count <= 125));
        assert_eq!(r.len(), 4, "400 registers in 124-register requests");
        assert_eq!(r.iter().map(|q| q.points.len()).sum::<usize>(), 100);
        let bits: Vec<Span> = (0..3000).map(|i| span(Coil, i, 1)).collect();
        let r = plan(&bits, LIMITS);
        assert_eq!(
            r.iter().map(|q| q.count).collect::<Vec<_>>(),
            vec![2000, 1000]
        );
        let tight = Limits {
            max_registers: 10,
            ..LIMITS
        };
        let r = plan(
            &[
                span(Holding, 0, 4),
                span(Holding, 4, 4),
                span(Holding, 8, 4),
            ],
            tight,
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn overlapping_bit_points_share_their_register() {
        let r = plan(
            &[
                span(Holding, 7, 1),
                span(Holding, 7, 1),
                span(Holding, 8, 2),
            ],
            LIMITS,
        );
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].start, r[0].count), (7, 3));
    }

    #[test]
    fn a_refused_request_splits_until_single_points() {
        let spans = [
            span(Holding, 0, 1),
            span(Holding, 1, 1),
            span(Holding, 3, 2),
            span(Holding, 5, 1),
        ];
        let mut r = plan(&spans, LIMITS);
        assert_eq!(r.len(), 1);
        assert!(split(&mut r, 0, &spans));
        assert_eq!(
            r.iter().map(|q| (q.start, q.count)).collect::<Vec<_>>(),
            vec![(0, 2), (3, 3)]
        );
        assert!(split(&mut r, 1, &spans));
        assert_eq!(
            r.iter().map(|q| (q.start, q.count)).collect::<Vec<_>>(),
            vec![(0, 2), (3, 2), (5, 1)]
        );
        assert!(!split(&mut r, 2, &spans));
        assert_eq!(r.iter().map(|q| q.points.len()).sum::<usize>(), 4);
    }
}
