//! Analyses built from the model's hooks and caches: representational
//! similarity (RSA), attention ratios and linear probes over prompt sets
//! with marked spans (Yousefi et al. 2023, arXiv 2310.00313), and
//! activation and attribution patching over clean/corrupted pairs.
//!
//! - `prompts`: the prompt-set format and span-to-token mapping;
//! - `runner`: one forward per prompt, span pooling, answer accuracy;
//! - `stats`: rank correlations, permutation and paired tests;
//! - `rsa`, `attention_ratio`, `probe`: the three analyses and their reports;
//! - `patching`: exact and attribution patching; `patch_sweeps`: the
//!   standard sweeps and their report;
//! - `patchscope`, `patchscope_eval`: Patchscopes and their next-token evaluation.
//!
//! May import `io`, `hooks`, `model`, `data` (corpora), `plots`.

pub mod attention_ratio;
pub mod patch_sweeps;
pub mod patch_task;
pub mod patching;
pub mod patchscope;
pub mod patchscope_eval;
pub mod probe;
pub mod prompts;
pub mod rsa;
pub mod runner;
pub mod stats;
