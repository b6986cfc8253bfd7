//! pki (being built).
