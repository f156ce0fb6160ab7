//! Where attempts go besides the metric families (`telemetry/`): the JSON event log, the
//! by-image family kept outside the registry, the pulls view and the Events on pods.

pub(crate) mod event_log;
pub(crate) mod image_counts;
pub(crate) mod pod_events;
pub(crate) mod pulls;
