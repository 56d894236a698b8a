//! Tools beside the service: the simulated city (`simulate`), scoring tasks against what the
//! simulator injected (`score`), and the embedded demo (`demo`). The processor never calls
//! into them.

pub mod demo;
pub mod score;
pub mod simulate;
