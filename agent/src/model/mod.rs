//! The floor: model types every stage shares and none owns. The call
//! record ([`call`]) protocol slices produce, the span ([`span`]) and
//! measurement ([`measure`]) derived from it, the route patterns
//! ([`route`]) both use, and errors shown with their causes ([`error`]). Modules here import nothing from the stages
//! (`probes`, `conn`, `protocols`, `spans`, `metrics`, `export`); the
//! stages import them.

pub mod call;
pub mod db;
pub mod error;
pub mod measure;
pub mod route;
pub mod span;
