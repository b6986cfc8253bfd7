//! Topic names and filters: validation, wildcard matching, shared-subscription parsing.
