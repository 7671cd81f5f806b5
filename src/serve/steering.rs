//! Steering in the server: the interventions and SAEs loaded at start-up, the
//! request field `steer` checked against them, and the per-request
//! interventions built from it.
//!
//! A request's `steer` is a list, applied in order after the server-wide
//! default (unless the request sets `"default_steer": false`):
//! - `{"name": N, "scale": s}`: the loaded intervention file `N`, each of its
//!   interventions at `s` times its strength (default 1);
//! - `{"hook": H, "vector": [...], "scale": s}`: add `s · vector` at hook `H`;
//! - `{"sae": N, "edits": [{"feature": i, "op": "add", "alpha": a} |
//!   {"feature": i, "op": "clamp", "value": v} | {"feature": i, "op":
//!   "ablate"}]}`: edit features of the loaded SAE `N` at its hook point.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use serde::Serialize;
use serde_json::Value;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{Blend, HookPoint, Intervention, Shared};
use crate::sae::Sae;
use crate::steer::kinds::sae_features::{FeatureEdit, SaeFeatureSteer};
use crate::steer::kinds::vector::SteeringVector;
use crate::steer::{load_steers, Steer};

/// A loaded intervention file as `/v1/steers` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SteerInfo {
    pub name: String,
    /// The kind of each intervention in the file, in order.
    pub kinds: Vec<String>,
    /// Every hook point the file's interventions act at.
    pub hooks: Vec<String>,
    /// The scale it is applied at by default, when it is a default steer.
    pub default_scale: Option<f64>,
}

/// A loaded SAE as `/v1/steers` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SaeInfo {
    pub name: String,
    pub hook: String,
    pub d_sae: usize,
}

/// What the request handlers know of the loaded steers: plain data, checked
/// without touching a tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Catalog {
    pub steers: Vec<SteerInfo>,
    pub saes: Vec<SaeInfo>,
    #[serde(skip)]
    pub d_model: usize,
    #[serde(skip)]
    pub n_layers: usize,
}

/// One checked item of a request's steering.
#[derive(Debug, Clone, PartialEq)]
pub enum SteerItem {
    Named {
        index: usize,
        scale: f64,
    },
    Vector {
        hook: HookPoint,
        values: Vec<f32>,
        scale: f64,
    },
    SaeEdits {
        index: usize,
        edits: Vec<FeatureEdit>,
    },
}

/// A request field that is wrong: which (`param`, as OpenAI names it) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
}

impl FieldError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// One loaded intervention, shared by every request that uses it.
type SharedSteer = Rc<RefCell<Box<dyn Steer>>>;

/// The steers and SAEs the server loaded; lives on the engine's thread.
pub struct LoadedSteers {
    /// Each file's interventions, shared by every request that names it.
    files: Vec<Vec<SharedSteer>>,
    saes: Vec<(Sae, String, HookPoint)>,
    /// Default steering: (file, scale), applied first.
    defaults: Vec<SteerItem>,
    d_model: usize,
    device: Device,
}

impl LoadedSteers {
    /// Loads `steers` (name, file) and `saes` (name, folder) for a model of
    /// `n_layers` blocks of width `d_model` on `device`, and makes the
    /// `defaults` (name, scale) apply to every request.
    pub fn load(
        steers: &[(String, PathBuf)],
        saes: &[(String, PathBuf)],
        defaults: &[(String, f64)],
        (n_layers, d_model, device): (usize, usize, Device),
    ) -> Result<(LoadedSteers, Catalog)> {
        let mut catalog = Catalog {
            steers: Vec::new(),
            saes: Vec::new(),
            d_model,
            n_layers,
        };
        let mut files = Vec::new();
        let all_hooks = HookPoint::all(n_layers);
        for (name, path) in steers {
            if catalog.steers.iter().any(|s| &s.name == name) {
                return Err(Error::InvalidArgument(format!(
                    "--steer {name} is given twice"
                )));
            }
            let loaded = load_steers(path, n_layers, device)?;
            let mut kinds = Vec::new();
            for s in &loaded {
                kinds.push(s.to_spec()?.0.kind);
            }
            let hooks = all_hooks
                .iter()
                .filter(|h| loaded.iter().any(|s| s.wants(**h)))
                .map(HookPoint::to_string)
                .collect();
            catalog.steers.push(SteerInfo {
                name: name.clone(),
                kinds,
                hooks,
                default_scale: None,
            });
            files.push(
                loaded
                    .into_iter()
                    .map(|s| Rc::new(RefCell::new(s)))
                    .collect(),
            );
        }
        let mut loaded_saes = Vec::new();
        for (name, dir) in saes {
            let sae = crate::sae::load_sae(dir)?.to_device(device)?;
            let hook_name = sae.hook_name().map(str::to_string).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--sae {name}: {} does not say which hook point it reads",
                    dir.display()
                ))
            })?;
            let hook = HookPoint::parse_for(&hook_name, n_layers)?;
            catalog.saes.push(SaeInfo {
                name: name.clone(),
                hook: hook.to_string(),
                d_sae: sae.cfg.d_sae,
            });
            loaded_saes.push((sae, dir.display().to_string(), hook));
        }
        let mut defaults_items = Vec::new();
        for (name, scale) in defaults {
            let index = catalog
                .steers
                .iter()
                .position(|s| &s.name == name)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--default-steer {name}: no --steer of that name"
                    ))
                })?;
            catalog.steers[index].default_scale = Some(*scale);
            defaults_items.push(SteerItem::Named {
                index,
                scale: *scale,
            });
        }
        let loaded = LoadedSteers {
            files,
            saes: loaded_saes,
            defaults: defaults_items,
            d_model,
            device,
        };
        Ok((loaded, catalog))
    }

    /// What `items` (after the defaults when `use_default`) are, when they
    /// are all loaded steers: requests with equal keys carry the same
    /// interventions, which the engine then applies once for all of them.
    pub fn key(&self, items: &[SteerItem], use_default: bool) -> Option<Vec<(u64, u64)>> {
        let defaults = if use_default { &self.defaults[..] } else { &[] };
        defaults
            .iter()
            .chain(items)
            .map(|item| match item {
                SteerItem::Named { index, scale } => Some((*index as u64, scale.to_bits())),
                _ => None,
            })
            .collect()
    }

    /// The interventions of `items`, after the defaults when `use_default`.
    pub fn build(
        &self,
        items: &[SteerItem],
        use_default: bool,
    ) -> Result<Vec<Box<dyn Intervention>>> {
        let defaults = if use_default { &self.defaults[..] } else { &[] };
        let mut out: Vec<Box<dyn Intervention>> = Vec::new();
        for item in defaults.iter().chain(items) {
            match item {
                SteerItem::Named { index, scale } => {
                    for steer in &self.files[*index] {
                        let shared = Shared(Rc::clone(steer));
                        out.push(if *scale == 1.0 {
                            Box::new(shared)
                        } else {
                            Box::new(Blend {
                                weight: *scale,
                                inner: shared,
                            })
                        });
                    }
                }
                SteerItem::Vector {
                    hook,
                    values,
                    scale,
                } => {
                    let vector = Tensor::from_slice(values)
                        .f_view([1, self.d_model as i64])?
                        .f_to_device(self.device)?;
                    out.push(Box::new(SteeringVector::new(vec![*hook], vector, *scale)?));
                }
                SteerItem::SaeEdits { index, edits } => {
                    let (sae, path, hook) = &self.saes[*index];
                    let sae = sae.to_device(sae.device())?;
                    out.push(Box::new(SaeFeatureSteer::new(
                        sae,
                        path.clone(),
                        *hook,
                        edits.clone(),
                        true,
                    )?));
                }
            }
        }
        Ok(out)
    }
}

/// Checks a request's `steer` field against the catalog.
pub fn parse_steer(
    catalog: &Catalog,
    steer: Option<&Value>,
) -> std::result::Result<Vec<SteerItem>, FieldError> {
    let items = match steer {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FieldError::new("steer", "must be a list of steering items")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_item(catalog, item, &format!("steer[{i}]")))
        .collect()
}

fn parse_item(
    catalog: &Catalog,
    item: &Value,
    at: &str,
) -> std::result::Result<SteerItem, FieldError> {
    let Value::Object(fields) = item else {
        return Err(FieldError::new(at, "must be an object"));
    };
    let field = |name: &str| format!("{at}.{name}");
    let scale = match fields.get("scale") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite())
            .ok_or_else(|| FieldError::new(field("scale"), "must be a finite number"))?,
    };
    let known = |allowed: &[&str]| match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FieldError::new(
            field(k),
            format!("unknown field; expected one of {allowed:?}"),
        )),
        None => Ok(()),
    };
    if let Some(name) = fields.get("name") {
        known(&["name", "scale"])?;
        let name = name
            .as_str()
            .ok_or_else(|| FieldError::new(field("name"), "must be a string"))?;
        let index = catalog
            .steers
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = catalog.steers.iter().map(|s| s.name.as_str()).collect();
                FieldError::new(
                    field("name"),
                    format!("unknown steer `{name}`; loaded: {names:?}"),
                )
            })?;
        return Ok(SteerItem::Named { index, scale });
    }
    if let Some(vector) = fields.get("vector") {
        known(&["hook", "vector", "scale"])?;
        let hook_name = fields.get("hook").and_then(Value::as_str).ok_or_else(|| {
            FieldError::new(field("hook"), "a vector needs the hook name it is added at")
        })?;
        let hook = HookPoint::parse_for(hook_name, catalog.n_layers)
            .map_err(|e| FieldError::new(field("hook"), e.to_string()))?;
        let values = vector
            .as_array()
            .map(|xs| {
                xs.iter()
                    .map(|x| x.as_f64().filter(|v| v.is_finite()).map(|v| v as f32))
                    .collect::<Option<Vec<f32>>>()
            })
            .and_then(|v| v)
            .ok_or_else(|| FieldError::new(field("vector"), "must be a list of finite numbers"))?;
        if values.len() != catalog.d_model {
            return Err(FieldError::new(
                field("vector"),
                format!(
                    "has {} numbers; the model's width is {}",
                    values.len(),
                    catalog.d_model
                ),
            ));
        }
        return Ok(SteerItem::Vector {
            hook,
            values,
            scale,
        });
    }
    if let Some(sae) = fields.get("sae") {
        known(&["sae", "edits"])?;
        let name = sae
            .as_str()
            .ok_or_else(|| FieldError::new(field("sae"), "must be a string"))?;
        let index = catalog
            .saes
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = catalog.saes.iter().map(|s| s.name.as_str()).collect();
                FieldError::new(
                    field("sae"),
                    format!("unknown SAE `{name}`; loaded: {names:?}"),
                )
            })?;
        let d_sae = catalog.saes[index].d_sae;
        let edits = fields
            .get("edits")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                FieldError::new(field("edits"), "must be a non-empty list of feature edits")
            })?;
        let edits = edits
            .iter()
            .enumerate()
            .map(|(j, e)| {
                let at = field(&format!("edits[{j}]"));
                let edit: FeatureEdit = serde_json::from_value(e.clone())
                    .map_err(|err| FieldError::new(&at, format!("{err}; expected {{\"feature\": i, \"op\": \"add\", \"alpha\": a}}, \"clamp\" with \"value\", or \"ablate\"")))?;
                if edit.feature >= d_sae {
                    return Err(FieldError::new(
                        format!("{at}.feature"),
                        format!("{} is out of range: SAE `{name}` has {d_sae} features", edit.feature),
                    ));
                }
                Ok(edit)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return Ok(SteerItem::SaeEdits { index, edits });
    }
    Err(FieldError::new(
        at,
        "needs `name` (a loaded steer), `vector` with `hook`, or `sae` with `edits`",
    ))
}
