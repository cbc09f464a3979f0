//! What the host tells operators about itself: Prometheus metrics and
//! OpenTelemetry traces.

pub mod metrics;
pub mod traces;
