//! Hook points, named as TransformerLens names them. Every architecture exposes
//! the same set.
//!
//! | name | shape |
//! |---|---|
//! | `hook_embed` | `[batch, seq, d_model]` token embeddings |
//! | `hook_pos_embed` | `[batch, seq, d_model]` learned position embeddings (GPT-2 only) |
//! | `blocks.{L}.hook_resid_pre` | `[batch, seq, d_model]` |
//! | `blocks.{L}.ln1.hook_normalized` | `[batch, seq, d_model]` the attention's input norm, gain included |
//! | `blocks.{L}.attn.hook_q` | `[batch, seq, n_heads, d_head]` queries before rotary embeddings |
//! | `blocks.{L}.attn.hook_k` | `[batch, seq, n_kv_heads, d_head]` keys before rotary embeddings |
//! | `blocks.{L}.attn.hook_v` | `[batch, seq, n_kv_heads, d_head]` values |
//! | `blocks.{L}.attn.hook_pattern` | `[batch, n_heads, seq_q, seq_k]` attention probabilities |
//! | `blocks.{L}.attn.hook_z` | `[batch, seq, n_heads, d_head]` per-head outputs before `W_O` |
//! | `blocks.{L}.attn.hook_result` | `[batch, seq, n_heads, d_model]` each head's contribution to the residual (`z·W_Oᵀ` per head; their sum plus `b_O` is `hook_attn_out`) |
//! | `blocks.{L}.hook_attn_out` | `[batch, seq, d_model]` |
//! | `blocks.{L}.hook_resid_mid` | `[batch, seq, d_model]` resid_pre + attn_out |
//! | `blocks.{L}.ln2.hook_normalized` | `[batch, seq, d_model]` the MLP's input norm, gain included |
//! | `blocks.{L}.mlp.hook_post` | `[batch, seq, d_mlp]` MLP activations before `W_out` |
//! | `blocks.{L}.hook_mlp_out` | `[batch, seq, d_model]` |
//! | `blocks.{L}.hook_resid_post` | `[batch, seq, d_model]` |
//! | `ln_final.hook_normalized` | `[batch, seq, d_model]` the final norm's output, gain included |
//!
//! In parallel-residual models (GPT-NeoX) the MLP reads `resid_pre`, and
//! `resid_mid` is still `resid_pre + attn_out`, so `resid_post = resid_mid + mlp_out`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The site inside block `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSite {
    ResidPre,
    Ln1Normalized,
    AttnQ,
    AttnK,
    AttnV,
    AttnPattern,
    AttnZ,
    AttnResult,
    AttnOut,
    ResidMid,
    Ln2Normalized,
    MlpPost,
    MlpOut,
    ResidPost,
}

impl BlockSite {
    const ALL: [(BlockSite, &'static str); 14] = [
        (BlockSite::ResidPre, "hook_resid_pre"),
        (BlockSite::Ln1Normalized, "ln1.hook_normalized"),
        (BlockSite::AttnQ, "attn.hook_q"),
        (BlockSite::AttnK, "attn.hook_k"),
        (BlockSite::AttnV, "attn.hook_v"),
        (BlockSite::AttnPattern, "attn.hook_pattern"),
        (BlockSite::AttnZ, "attn.hook_z"),
        (BlockSite::AttnResult, "attn.hook_result"),
        (BlockSite::AttnOut, "hook_attn_out"),
        (BlockSite::ResidMid, "hook_resid_mid"),
        (BlockSite::Ln2Normalized, "ln2.hook_normalized"),
        (BlockSite::MlpPost, "mlp.hook_post"),
        (BlockSite::MlpOut, "hook_mlp_out"),
        (BlockSite::ResidPost, "hook_resid_post"),
    ];

    /// Every site of a block, in forward order.
    pub fn all() -> impl Iterator<Item = BlockSite> {
        BlockSite::ALL.iter().map(|(site, _)| *site)
    }

    /// The TransformerLens name of the site inside a block, e.g. `hook_attn_out`.
    pub fn name(self) -> &'static str {
        BlockSite::ALL
            .iter()
            .find(|(site, _)| *site == self)
            .map(|(_, s)| *s)
            .unwrap_or("?")
    }
}

/// One hook point. Ordered by where it occurs in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    Embed,
    PosEmbed,
    Block(usize, BlockSite),
    LnFinal,
}

impl HookPoint {
    pub fn resid_pre(layer: usize) -> Self {
        HookPoint::Block(layer, BlockSite::ResidPre)
    }
    pub fn resid_mid(layer: usize) -> Self {
        HookPoint::Block(layer, BlockSite::ResidMid)
    }
    pub fn resid_post(layer: usize) -> Self {
        HookPoint::Block(layer, BlockSite::ResidPost)
    }
    pub fn attn_out(layer: usize) -> Self {
        HookPoint::Block(layer, BlockSite::AttnOut)
    }
    pub fn mlp_out(layer: usize) -> Self {
        HookPoint::Block(layer, BlockSite::MlpOut)
    }

    /// The block this hook belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::Block(l, _) => Some(*l),
            _ => None,
        }
    }

    /// Parses a name and checks it against a model with `n_layers` blocks.
    pub fn parse_for(name: &str, n_layers: usize) -> Result<Self> {
        let hook: HookPoint = name.parse()?;
        if let Some(layer) = hook.layer() {
            if layer >= n_layers {
                return Err(Error::UnknownHook {
                    name: name.to_string(),
                    reason: format!(
                        "layer {layer} is out of range, the model has {n_layers} blocks"
                    ),
                });
            }
        }
        Ok(hook)
    }

    /// The hook points a name stands for in a model with `n_layers` blocks:
    /// the name itself, or with `*` as the layer (`blocks.*.hook_resid_post`)
    /// the site in every block, in order.
    pub fn expand(name: &str, n_layers: usize) -> Result<Vec<Self>> {
        match name.strip_prefix("blocks.*.") {
            Some(site) => (0..n_layers)
                .map(|l| HookPoint::parse_for(&format!("blocks.{l}.{site}"), n_layers))
                .collect(),
            None => Ok(vec![HookPoint::parse_for(name, n_layers)?]),
        }
    }

    /// Every hook point of a model with `n_layers` blocks, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut out = vec![HookPoint::Embed, HookPoint::PosEmbed];
        for l in 0..n_layers {
            out.extend(
                BlockSite::ALL
                    .iter()
                    .map(|(site, _)| HookPoint::Block(l, *site)),
            );
        }
        out.push(HookPoint::LnFinal);
        out
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => write!(f, "hook_embed"),
            HookPoint::PosEmbed => write!(f, "hook_pos_embed"),
            HookPoint::Block(l, site) => write!(f, "blocks.{l}.{}", site.name()),
            HookPoint::LnFinal => write!(f, "ln_final.hook_normalized"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let unknown = |reason: &str| Error::UnknownHook {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        match name {
            "hook_embed" => return Ok(HookPoint::Embed),
            "hook_pos_embed" => return Ok(HookPoint::PosEmbed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(|| {
            unknown("expected `hook_embed`, `hook_pos_embed`, `ln_final.hook_normalized` or `blocks.{L}.<site>`")
        })?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| unknown("expected `blocks.{L}.<site>`"))?;
        let layer: usize = layer
            .parse()
            .map_err(|_| unknown("the layer after `blocks.` must be a number"))?;
        let site = BlockSite::ALL
            .iter()
            .find(|(_, s)| *s == suffix)
            .map(|(site, _)| *site)
            .ok_or_else(|| {
                let sites: Vec<&str> = BlockSite::ALL.iter().map(|(_, s)| *s).collect();
                unknown(&format!(
                    "unknown site `{suffix}`; known sites: {}",
                    sites.join(", ")
                ))
            })?;
        Ok(HookPoint::Block(layer, site))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for hook in HookPoint::all(3) {
            let name = hook.to_string();
            assert_eq!(name.parse::<HookPoint>().unwrap(), hook, "{name}");
        }
    }

    #[test]
    fn order_follows_the_forward_pass() {
        let all = HookPoint::all(2);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert!(HookPoint::resid_post(0) < HookPoint::resid_pre(1));
    }

    #[test]
    fn bad_names_are_explained() {
        let err = "blocks.3.hook_resid_pots".parse::<HookPoint>().unwrap_err();
        assert!(err.to_string().contains("hook_resid_post"), "{err}");
        let err = HookPoint::parse_for("blocks.30.hook_resid_post", 30).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!("resid_post".parse::<HookPoint>().is_err());
        assert!("blocks.x.hook_resid_post".parse::<HookPoint>().is_err());
    }

    #[test]
    fn a_star_layer_expands_to_every_block() {
        let all = HookPoint::expand("blocks.*.hook_resid_post", 3).unwrap();
        assert_eq!(all, (0..3).map(HookPoint::resid_post).collect::<Vec<_>>());
        assert_eq!(
            HookPoint::expand("blocks.1.hook_mlp_out", 3).unwrap(),
            [HookPoint::mlp_out(1)]
        );
        assert!(HookPoint::expand("blocks.*.hook_nothing", 3).is_err());
        assert!(HookPoint::expand("blocks.3.hook_mlp_out", 3).is_err());
    }
}
