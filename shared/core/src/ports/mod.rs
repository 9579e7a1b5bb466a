//! The ports the pipeline runs on: an object store and a queue, with their in-process
//! implementations (a local folder, an in-memory FIFO), and a wrapper that counts requests.

pub mod counting;
pub mod queue;
pub mod store;
