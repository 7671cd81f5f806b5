//! Analyses built from the model's hooks and caches: representational
//! similarity (RSA), attention ratios and linear probes over prompt sets
//! with marked spans (Yousefi et al. 2023, arXiv 2310.00313).
//!
//! - `prompts`: the prompt-set format and span-to-token mapping;
//! - `runner`: one forward per prompt, span pooling, answer accuracy;
//! - `stats`: rank correlations, permutation and paired tests;
//! - `rsa`, `attention_ratio`, `probe`: the three analyses and their reports.
//!
//! May import `io`, `hooks`, `model`, `plots`.

pub mod attention_ratio;
pub mod probe;
pub mod prompts;
pub mod rsa;
pub mod runner;
pub mod stats;
