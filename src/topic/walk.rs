//! The explicit stack every topic-level tree walk uses instead of recursion
//! (subscription trie, retained store, ACL tries): the depth of those trees comes
//! from clients and from the acl_file, so a walk must never use the call stack in
//! proportion to it. It holds the first `N` pending frames inline, so the common
//! walk does not allocate, and spills the rest onto the heap.

/// A LIFO stack of `Copy` frames: the top one apart, `N` more inline, then a heap `Vec`.
pub(crate) struct WalkStack<T: Copy, const N: usize> {
    /// The most recent frame, kept out of the array: a walk down a single path
    /// pushes one frame and pops it right away, so it stays in registers.
    top: Option<T>,
    /// The next `N` frames, oldest first; `None` above `len`.
    inline: [Option<T>; N],
    /// Frames in use in `inline`.
    len: usize,
    /// Frames pushed while `inline` is full; non-empty only when `inline` is full.
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> WalkStack<T, N> {
    /// An empty stack; allocates nothing.
    #[inline]
    pub fn new() -> Self {
        WalkStack {
            top: None,
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// A stack holding `frame`.
    #[inline]
    pub fn with(frame: T) -> Self {
        let mut stack = Self::new();
        stack.push(frame);
        stack
    }

    #[inline]
    pub fn push(&mut self, frame: T) {
        let Some(below) = self.top.replace(frame) else {
            return;
        };
        if self.len < N {
            self.inline[self.len] = Some(below);
            self.len += 1;
        } else {
            self.spill.push(below);
        }
    }

    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if let Some(frame) = self.top.take() {
            return Some(frame);
        }
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len]
    }
}

/// Test support: runs `f` on a thread with a 64 KiB stack, where a walk recursing once
/// per level of a deep topic, filter or rule overflows (and aborts the test binary).
#[cfg(test)]
pub(crate) fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(f)
        .expect("spawn test thread")
        .join()
        .expect("test thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_reverse_push_order_across_the_spill() {
        let mut stack: WalkStack<u32, 2> = WalkStack::with(0);
        for i in 1..5 {
            stack.push(i);
        }
        assert_eq!(stack.pop(), Some(4));
        assert_eq!(stack.pop(), Some(3));
        stack.push(7);
        let rest: Vec<u32> = std::iter::from_fn(|| stack.pop()).collect();
        assert_eq!(rest, vec![7, 2, 1, 0]);
    }
}
