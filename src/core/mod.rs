//! The source-independent core: the attempt model, the pull anatomy, the classifier, the backoff tracker and the
//! cardinality guard.

pub mod anatomy;
pub mod attempt;
pub mod backoff;
pub mod cardinality;
pub mod classifier;
pub mod endpoints;
pub mod progress;
pub mod rate;
pub mod reason;
pub mod reference;
