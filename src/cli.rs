//! Command line (being built).
