//! Swarm desired state, spec building and activation planning.
