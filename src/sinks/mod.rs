//! Where attempts go besides the metric families (`telemetry/`): the JSON event log, the
//! by-image family kept outside the registry, the pulls view and the Events on pods.

pub mod event_log;
pub mod image_counts;
pub mod pod_events;
pub mod pulls;
