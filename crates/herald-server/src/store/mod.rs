//! Store implementations that need the filesystem (the trait and the in-memory store are in
//! herald-core).

mod redb_store;

pub use redb_store::RedbStore;
