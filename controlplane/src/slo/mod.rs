//! SLOs: definitions ([`spec`]), what each event counts towards ([`sli`]),
//! the arithmetic of budgets, burn rates and alert tiers over one-minute
//! buckets ([`eval`]), the status shown by the API ([`status`]) and the
//! background loop that keeps the counting index fresh, flushes the API's
//! own requests and prunes old buckets ([`engine`]), and the SLO gauges on
//! `/metrics` ([`metrics`]).
pub mod engine;
pub mod eval;
pub mod gate;
pub mod metrics;
pub mod sli;
pub mod spec;
pub mod status;
#[cfg(test)]
mod tests;
