//! The subcommands, one module each, and the options they share (`common`).

pub mod bench;
pub mod common;
pub mod reconcile;
pub mod refit;
pub mod report;
pub mod resume;
pub mod run;
pub mod simulate;
pub mod status;
pub mod submit;
pub mod watch;
