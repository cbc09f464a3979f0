//! The triggers that run components: HTTP requests (with Spin's service
//! chaining), Redis messages, and the schedules bazaar adds for work Spin has
//! no trigger for.

pub mod http;
pub mod redis;
pub mod schedule;
