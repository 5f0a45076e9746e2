//! The host state directory: store, generations, current, journal, lock.
