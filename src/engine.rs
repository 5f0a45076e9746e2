//! Docker Engine access (bollard stays inside this module).
