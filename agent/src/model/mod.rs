//! The floor: model types every stage shares and none owns. The call
//! record ([`call`]) protocol slices produce, the span ([`span`]) and
//! measurement ([`measure`]) derived from it, and the route patterns
//! ([`route`]) both use. Modules here import nothing from the stages
//! (`probes`, `conn`, `protocols`, `spans`, `metrics`, `export`); the
//! stages import them.

pub mod call;
pub mod measure;
pub mod route;
pub mod span;
