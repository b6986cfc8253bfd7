//! Application lifecycle (being built).
