//! Test data shared by several tests.

/// The seed file exactly as the tutorial prints it.
pub const SEED_ACL: &str = "# Admin can access everything
user admin
topic readwrite #

# Sensor devices can only publish to their topics
user sensor_001
topic write sensors/001/#
topic read commands/001

# Dashboard can read everything, write nothing
user dashboard
topic read sensors/#
topic read devices/#

# Default: deny everything
topic deny #
";

/// [`SEED_ACL`] without its trailing `topic deny #` (and that line's comment).
pub fn seed_acl_without_trailing_deny() -> &'static str {
    SEED_ACL
        .strip_suffix("\n# Default: deny everything\ntopic deny #\n")
        .expect("the seed ends with its default deny")
}
