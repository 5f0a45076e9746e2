//! Extra Docker engines in network namespaces (DESIGN §6), for multi-node tests.
