//! What the host tells operators about itself: Prometheus metrics.

pub mod metrics;
