//! reemo-bundle library: recipe → store → oci/bundle → loader → swarm.
