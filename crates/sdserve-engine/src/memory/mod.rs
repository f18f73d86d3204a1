//! The memory plan: how much memory this process may use ([`budget`]), what
//! a generation of a given size costs ([`cost`]), and the plan the engine
//! computes at load from both ([`plan`]), which the server and CLI consult
//! before accepting a request, instead of letting the kernel's OOM killer answer.

pub mod budget;
pub mod cost;
mod load;
pub mod plan;

pub use budget::{human_bytes, parse_size, peak_rss, Budget, Candidate, HostPaths, SizeError};
pub use cost::{Attention, ModelShape};
pub(crate) use load::plan_for_model;
pub use plan::{MemoryPlan, OverBudget};
