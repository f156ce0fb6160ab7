//! Where attempts go: the Prometheus registry and the JSON event log.

pub mod event_log;
pub mod image_counts;
pub mod metrics;
