//! What the capabilities store their data in, apart from the capabilities
//! themselves: a factor decides what a guest may do, a backend only keeps
//! the data.

pub mod sqlite_pool;
