//! `lathe search`: a recipe template whose values name the parameters of a search space, sampled
//! on a grid, at random or by successive halving. Every trial applies its recipe to the model and
//! is measured against the original (fidelity, size, latency); the study is a lathe-search log in
//! the study folder, so a killed search resumes without rerunning finished trials, and its trials
//! can also run as independent jobs whose results are collected back into the same log.
//!
//! A spec is a recipe (`name`, `[[steps]]`) plus three tables:
//!
//! ```toml
//! objectives = ["mean_cosine:max", "size_bytes:min", "latency_ms:min"]
//!
//! [space]
//! sparsity = { float = [0.3, 0.7] }            # linear; add `log = true` for learning rates
//! int8 = { choice = [false, true] }            # any TOML values: strings, numbers, booleans, lists
//! # layers = { int = [2, 6], step = 2 }
//!
//! [search]
//! grid_points = 3                              # values per float range on the grid
//! # halving = { min_budget = 1, max_budget = 9, eta = 3, rank_by = "mean_cosine" }
//!
//! [[steps]]
//! step = "prune"
//! method = "magnitude"
//! sparsity = "{sparsity}"                      # a whole-value placeholder: stays a number
//!
//! [[steps]]
//! enabled = "{int8}"                           # a step whose `enabled` is false is left out
//! step = "quantize"
//! scheme = "int8-channel"
//! ```
//!
//! A string that is exactly one placeholder takes the parameter's own TOML value (a float stays a
//! float, a list a list); placeholders inside longer strings are replaced by the value's text
//! (`name = "magnitude {sparsity}"`), and `{{` / `}}` are literal braces. `{budget}` is the budget
//! of successive halving (`[search] halving`), and its `max_budget` under the other samplers. The
//! spec works on the TOML values, so it serves any step and key a recipe accepts: every trial's
//! recipe is checked by [`Recipe::from_toml`] before anything runs.
//!
//! The study folder holds `study.json` (what the study was made from: a rerun with another spec,
//! model, evaluation set or sampler is refused), `study.jsonl` (the lathe-search log),
//! `baseline.safetensors` (the original model's embeddings, computed once), `trials/<id>/`
//! (`recipe.toml`, and the compressed `model/` only with `keep_models`), `results/<id>.json`
//! (trials run as separate jobs) and `pareto.md`.
//!
//! ```
//! use lathe_recipe::search::{Sampler, Spec};
//!
//! let spec = Spec::from_toml(
//!     "[space]\nsparsity = { float = [0.25, 0.75] }\n\
//!      [[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\n",
//!     "spec.toml",
//! )?;
//! let configs = spec.configs(Sampler::Grid)?; // 3 grid points by default
//! assert_eq!(configs.len(), 3);
//! let recipe = spec.recipe(&configs[1], None)?;
//! assert_eq!(recipe.steps[0].describe(), "prune magnitude 50%");
//! # Ok::<(), lathe_recipe::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use lathe_model::SentenceEncoder;
use lathe_search::template::{Piece, pieces};
use lathe_search::{
    Collected, Direction, Domain, Halving, Objective, Params, Report, Scale, Space, Status, Study, TrialError,
    TrialInput, TrialResult, Value,
};
use lathe_tensor::{Dtype, SafeTensors, SafeTensorsWriter, TensorSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::{Table, Value as Toml};

use crate::eval;
use crate::recipe::Recipe;
use crate::{Error, Result};

/// A quantity a trial is measured on, with the direction that is better by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// The name objectives use.
    pub name: &'static str,
    /// Better large or small, when the spec does not say (`mean_cosine` means `mean_cosine:max`).
    pub direction: Direction,
    /// What it is.
    pub description: &'static str,
}

const fn measure(name: &'static str, direction: Direction, description: &'static str) -> Measure {
    Measure { name, direction, description }
}

/// Everything a trial can be measured on.
pub const MEASURES: &[Measure] = &[
    measure("mean_cosine", Direction::Maximize, "mean cosine to the original model's sentence embeddings"),
    measure("min_cosine", Direction::Maximize, "lowest cosine to the original model's sentence embeddings"),
    measure("spearman", Direction::Maximize, "Spearman correlation of the pairwise similarities"),
    measure("top1_agreement", Direction::Maximize, "fraction of sentences keeping their nearest neighbour"),
    measure("size_bytes", Direction::Minimize, "bytes of the weight files (*.safetensors)"),
    measure("size_mb", Direction::Minimize, "the same in MB (10^6 bytes)"),
    measure("compression", Direction::Maximize, "the original's weight bytes over the trial's"),
    measure("latency_ms", Direction::Minimize, "milliseconds to embed one sentence, one at a time"),
    measure("speedup", Direction::Maximize, "the original's latency_ms over the trial's"),
    measure("compress_seconds", Direction::Minimize, "seconds the recipe took to apply"),
];

/// The objectives of a spec that names none.
pub const DEFAULT_OBJECTIVES: &[&str] = &["mean_cosine:max", "size_bytes:min", "latency_ms:min"];

/// The placeholder successive halving fills with the budget.
pub const BUDGET: &str = "budget";

/// Grid points per float range when `[search] grid_points` is absent.
pub const DEFAULT_GRID_POINTS: usize = 3;

/// Sentences (the first of the evaluation set) the single-sentence latency is timed on.
pub const LATENCY_SENTENCES: usize = 16;

/// The step key that leaves a step out when false.
const ENABLED: &str = "enabled";

const MANIFEST: &str = "study.json";
const LOG: &str = "study.jsonl";
const BASELINE: &str = "baseline.safetensors";
const PARETO: &str = "pareto.md";
const EMBEDDINGS: &str = "embeddings";

/// How the configurations of a study are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// Every combination once: categories and integer steps in full, `grid_points` per float range.
    Grid,
    /// `trials` seeded draws (the same seed gives the same trials; more trials extend fewer).
    Random {
        /// How many.
        trials: usize,
        /// The seed.
        seed: u64,
    },
    /// Successive halving over `trials` seeded random draws (`[search] halving` in the spec).
    Halving {
        /// Configurations in the first rung.
        trials: usize,
        /// The seed of the draws.
        seed: u64,
    },
}

impl Sampler {
    /// The sampler of a command line: `grid`, `random` or `halving`, with `--trials` (required
    /// by random and halving, refused by grid) and `--seed`.
    pub fn from_name(name: &str, trials: Option<usize>, seed: u64) -> Result<Sampler> {
        let bad = |option: &str, message: String| Error::BadOption { option: option.into(), message };
        let trials_for = |sampler: &str| match trials {
            Some(0) => Err(bad("trials", format!("0: the {sampler} sampler needs at least 1 trial"))),
            Some(trials) => Ok(trials),
            None => Err(bad("trials", format!("the {sampler} sampler needs --trials N"))),
        };
        match name {
            "grid" if trials.is_some() => Err(bad(
                "trials",
                "applies to the random and halving samplers; the grid's size comes from the space".into(),
            )),
            "grid" => Ok(Sampler::Grid),
            "random" => Ok(Sampler::Random { trials: trials_for("random")?, seed }),
            "halving" => Ok(Sampler::Halving { trials: trials_for("halving")?, seed }),
            other => Err(bad("sampler", format!("`{other}`: expected grid, random or halving"))),
        }
    }

    /// `grid`, `random` or `halving`.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Grid => "grid",
            Sampler::Random { .. } => "random",
            Sampler::Halving { .. } => "halving",
        }
    }

    fn seed(&self) -> Option<u64> {
        match *self {
            Sampler::Grid => None,
            Sampler::Random { seed, .. } | Sampler::Halving { seed, .. } => Some(seed),
        }
    }

    fn describe(&self) -> String {
        match *self {
            Sampler::Grid => "grid".to_owned(),
            Sampler::Random { trials, seed } => format!("random, {trials} trials, seed {seed}"),
            Sampler::Halving { trials, seed } => format!("successive halving over {trials} random trials, seed {seed}"),
        }
    }
}

/// A search spec: the recipe template, its space, the objectives and the search settings.
#[derive(Debug, Clone)]
pub struct Spec {
    origin: String,
    template: Table,
    space: Space,
    /// Categories that are neither numbers nor strings (booleans, lists, tables) are logged as
    /// their TOML text; a whole-value placeholder gets the value back: parameter -> text -> value.
    literals: BTreeMap<String, BTreeMap<String, Toml>>,
    objectives: Vec<Objective>,
    grid_points: usize,
    halving: Option<Halving>,
    uses_budget: bool,
    digest: String,
}

/// Every placeholder in `value` with where it is (`steps[1].sparsity`).
fn placeholders(value: &Toml, location: &str, found: &mut Vec<(String, String)>) -> std::result::Result<(), String> {
    match value {
        Toml::String(text) => {
            for piece in pieces(text).map_err(|reason| format!("{location}: {reason}"))? {
                if let Piece::Placeholder(name) = piece {
                    found.push((location.to_owned(), name));
                }
            }
        }
        Toml::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                placeholders(item, &format!("{location}[{index}]"), found)?;
            }
        }
        Toml::Table(table) => {
            for (key, item) in table {
                placeholders(item, &join(location, key), found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `value` with every table's keys in name order, whichever map the toml crate was built with, so
/// digests and logged values do not depend on its features.
fn sorted(value: &Toml) -> Toml {
    match value {
        Toml::Array(items) => Toml::Array(items.iter().map(sorted).collect()),
        Toml::Table(table) => {
            let mut entries: Vec<(&String, &Toml)> = table.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Toml::Table(entries.into_iter().map(|(key, item)| (key.clone(), sorted(item))).collect())
        }
        other => other.clone(),
    }
}

fn join(location: &str, key: &str) -> String {
    if location.is_empty() { key.to_owned() } else { format!("{location}.{key}") }
}

/// A budget as TOML: an integer when it is one (so it fits integer keys such as `max_steps`).
fn budget_value(budget: f64) -> Toml {
    if budget.fract() == 0.0 && budget.abs() < 9.0e15 { Toml::Integer(budget as i64) } else { Toml::Float(budget) }
}

fn budget_text(budget: f64) -> String {
    match budget_value(budget) {
        Toml::Integer(value) => value.to_string(),
        _ => format!("{budget:?}"),
    }
}

/// Parameters (and budget) as one line of JSON, for messages.
fn describe_trial(params: &Params, budget: Option<f64>) -> String {
    match budget {
        Some(budget) => format!("{} at budget {}", params.to_json(), budget_text(budget)),
        None => params.to_json(),
    }
}

fn parse_objective(text: &str) -> std::result::Result<Objective, String> {
    let (name, direction) = match text.split_once(':') {
        Some((name, direction)) => (name, Some(direction)),
        None => (text, None),
    };
    let Some(measure) = MEASURES.iter().find(|measure| measure.name == name) else {
        let names: Vec<&str> = MEASURES.iter().map(|measure| measure.name).collect();
        return Err(format!("unknown objective `{name}`: expected one of {}", names.join(", ")));
    };
    let direction = match direction {
        None => measure.direction,
        Some("max") => Direction::Maximize,
        Some("min") => Direction::Minimize,
        Some(other) => return Err(format!("objective `{text}`: `{other}` is neither min nor max")),
    };
    Ok(Objective { name: name.to_owned(), direction })
}

fn number(value: &Toml) -> Option<f64> {
    match *value {
        Toml::Integer(value) => Some(value as f64),
        Toml::Float(value) => Some(value),
        _ => None,
    }
}

/// A `[low, high]` pair.
fn pair<T>(value: &Toml, what: &str, convert: impl Fn(&Toml) -> Option<T>) -> std::result::Result<(T, T), String> {
    match value.as_array().map(Vec::as_slice) {
        Some([low, high]) => match (convert(low), convert(high)) {
            (Some(low), Some(high)) => Ok((low, high)),
            _ => Err(format!("expected [low, high] of {what}s, found {value}")),
        },
        _ => Err(format!("expected [low, high] of {what}s, found {value}")),
    }
}

/// One `[space]` entry: `{ float = [a, b], log = true }`, `{ int = [a, b], step = s }`,
/// `{ choice = [...] }` or a bare list of choices. Returns the domain and, for categories that
/// are neither numbers nor strings, their values by logged text.
fn parse_domain(value: &Toml) -> std::result::Result<(Domain, BTreeMap<String, Toml>), String> {
    let expected = "expected { float = [low, high] }, { int = [low, high] }, { choice = [...] } or a list of choices";
    let table = match value {
        Toml::Array(items) => return choices(items),
        Toml::Table(table) => table,
        other => return Err(format!("{other}: {expected}")),
    };
    let kinds: Vec<&str> = ["float", "int", "choice"].into_iter().filter(|kind| table.contains_key(*kind)).collect();
    let [kind] = kinds.as_slice() else { return Err(format!("{value}: {expected}")) };
    let allowed: &[&str] = match *kind {
        "float" => &["float", "log"],
        "int" => &["int", "step"],
        _ => &["choice"],
    };
    if let Some(key) = table.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(format!("unknown key `{key}` for a {kind} parameter (it takes {})", allowed.join(", ")));
    }
    match *kind {
        "float" => {
            let (low, high) = pair(&table["float"], "number", number)?;
            let scale = match table.get("log") {
                None | Some(Toml::Boolean(false)) => Scale::Linear,
                Some(Toml::Boolean(true)) => Scale::Log,
                Some(other) => return Err(format!("log = {other}: expected true or false")),
            };
            Ok((Domain::Float { low, high, scale }, BTreeMap::new()))
        }
        "int" => {
            let (low, high) = pair(&table["int"], "integer", Toml::as_integer)?;
            let step = match table.get("step") {
                None => 1,
                Some(Toml::Integer(step)) => *step,
                Some(other) => return Err(format!("step = {other}: expected an integer")),
            };
            Ok((Domain::Int { low, high, step }, BTreeMap::new()))
        }
        _ => match &table["choice"] {
            Toml::Array(items) => choices(items),
            other => Err(format!("choice = {other}: expected a list")),
        },
    }
}

fn choices(items: &[Toml]) -> std::result::Result<(Domain, BTreeMap<String, Toml>), String> {
    let mut literals = BTreeMap::new();
    let values = items
        .iter()
        .map(|item| match item {
            Toml::String(text) => Value::Str(text.clone()),
            Toml::Integer(value) => Value::Int(*value),
            Toml::Float(value) => Value::Float(*value),
            other => {
                let other = sorted(other);
                let text = other.to_string();
                literals.insert(text.clone(), other);
                Value::Str(text)
            }
        })
        .collect();
    Ok((Domain::Categorical(values), literals))
}

impl Spec {
    /// Parses a spec from TOML text; `origin` names it in errors (a file path).
    ///
    /// # Errors
    /// [`Error::Recipe`] naming `origin` for malformed TOML, an ill-defined parameter, an unknown
    /// objective, a placeholder the space does not define (or a parameter no value uses), and
    /// bad `[search]` settings. The recipe's own keys are checked per trial, by
    /// [`Spec::recipe`] and before any trial runs.
    pub fn from_toml(text: &str, origin: &str) -> Result<Spec> {
        let bad = |message: String| Error::Recipe { origin: origin.to_owned(), message };
        let mut template: Table = toml::from_str(text).map_err(|error| bad(error.to_string().trim().to_owned()))?;
        // The digest of the parsed spec, so comments and layout may change under a running study.
        let canonical =
            toml::to_string(&sorted(&Toml::Table(template.clone()))).map_err(|error| bad(error.to_string()))?;
        let digest = format!("{:x}", Sha256::digest(canonical.as_bytes()));

        let objectives: Vec<Objective> = match template.remove("objectives") {
            None => DEFAULT_OBJECTIVES.iter().map(|text| parse_objective(text)).collect::<std::result::Result<_, _>>(),
            Some(Toml::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|item| match item {
                    Toml::String(text) => parse_objective(text),
                    other => Err(format!("objective {other}: expected a string such as \"mean_cosine:max\"")),
                })
                .collect(),
            Some(other) => Err(format!("objectives = {other}: expected a list such as [\"mean_cosine:max\"]")),
        }
        .map_err(bad)?;
        Study::new(objectives.clone()).map_err(|error| bad(error.to_string()))?;

        let mut space = Space::new();
        let mut literals = BTreeMap::new();
        match template.remove("space") {
            None => {}
            Some(Toml::Table(table)) => {
                // Name order: the grid's order (the last name varies fastest) and the random
                // draws must not depend on how the toml crate orders keys.
                let mut entries: Vec<(&String, &Toml)> = table.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (name, value) in entries {
                    if name == BUDGET {
                        return Err(bad(format!(
                            "[space] `{BUDGET}` is reserved: `{{{BUDGET}}}` is the budget of successive halving"
                        )));
                    }
                    let (domain, values) =
                        parse_domain(value).map_err(|reason| bad(format!("[space] {name}: {reason}")))?;
                    space = space.add(name, domain).map_err(|error| bad(format!("[space] {error}")))?;
                    if !values.is_empty() {
                        literals.insert(name.clone(), values);
                    }
                }
            }
            Some(other) => return Err(bad(format!("space = {other}: expected a table of parameters"))),
        }

        let (grid_points, halving) = match template.remove("search") {
            None => (DEFAULT_GRID_POINTS, None),
            Some(Toml::Table(table)) => Spec::search_settings(&table, &objectives).map_err(bad)?,
            Some(other) => return Err(bad(format!("search = {other}: expected a table"))),
        };

        let mut found = Vec::new();
        placeholders(&Toml::Table(template.clone()), "", &mut found).map_err(bad)?;
        let defined: BTreeSet<&str> = space.params().map(|(name, _)| name).collect();
        for (location, name) in &found {
            if name == BUDGET {
                if halving.is_none() {
                    return Err(bad(format!(
                        "{location}: `{{{BUDGET}}}` needs [search] halving = {{ min_budget = .., max_budget = .. }}"
                    )));
                }
            } else if !defined.contains(name.as_str()) {
                let names: Vec<&str> = defined.iter().copied().collect();
                let defines =
                    if names.is_empty() { "defines none".to_owned() } else { format!("defines {}", names.join(", ")) };
                return Err(bad(format!("{location}: unknown placeholder `{{{name}}}`: the [space] table {defines}")));
            }
        }
        let used: BTreeSet<&str> = found.iter().map(|(_, name)| name.as_str()).collect();
        if let Some(unused) = defined.iter().find(|name| !used.contains(**name)) {
            return Err(bad(format!("[space] {unused}: no value of the recipe uses `{{{unused}}}`")));
        }
        Ok(Spec {
            origin: origin.to_owned(),
            template,
            space,
            literals,
            objectives,
            grid_points,
            halving,
            uses_budget: used.contains(BUDGET),
            digest,
        })
    }

    fn search_settings(
        table: &Table,
        objectives: &[Objective],
    ) -> std::result::Result<(usize, Option<Halving>), String> {
        if let Some(key) = table.keys().find(|key| !["grid_points", "halving"].contains(&key.as_str())) {
            return Err(format!("[search] unknown key `{key}` (it takes grid_points and halving)"));
        }
        let grid_points = match table.get("grid_points") {
            None => DEFAULT_GRID_POINTS,
            Some(Toml::Integer(points)) if *points >= 1 => *points as usize,
            Some(other) => return Err(format!("[search] grid_points = {other}: expected an integer of at least 1")),
        };
        let halving = match table.get("halving") {
            None => None,
            Some(Toml::Table(settings)) => {
                let keys = ["min_budget", "max_budget", "eta", "rank_by"];
                if let Some(key) = settings.keys().find(|key| !keys.contains(&key.as_str())) {
                    return Err(format!("[search] halving: unknown key `{key}` (it takes {})", keys.join(", ")));
                }
                let budget = |key: &str| {
                    settings
                        .get(key)
                        .and_then(number)
                        .ok_or_else(|| format!("[search] halving needs `{key}`, a number"))
                };
                let eta = match settings.get("eta") {
                    None => 3,
                    Some(Toml::Integer(eta)) if *eta >= 0 => *eta as usize,
                    Some(other) => return Err(format!("[search] halving eta = {other}: expected an integer")),
                };
                let rank_by = match settings.get("rank_by") {
                    None => 0,
                    Some(Toml::String(name)) => objectives
                        .iter()
                        .position(|o| o.name == *name)
                        .ok_or_else(|| format!("[search] halving rank_by = \"{name}\" is not one of the objectives"))?,
                    Some(other) => return Err(format!("[search] halving rank_by = {other}: expected an objective")),
                };
                let halving =
                    Halving { min_budget: budget("min_budget")?, max_budget: budget("max_budget")?, eta, rank_by };
                // lathe-search's own checks (budgets, eta), on an empty run.
                Study::new(objectives.to_vec())
                    .and_then(|study| study.run_halving(&[], &halving, |_: &TrialInput<'_>| Ok(Vec::new())))
                    .map_err(|error| format!("[search] {error}"))?;
                Some(halving)
            }
            Some(other) => return Err(format!("[search] halving = {other}: expected a table")),
        };
        Ok((grid_points, halving))
    }

    /// Reads and parses a spec file.
    pub fn read(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Spec::from_toml(&text, &path.display().to_string())
    }

    /// The file (or label) errors name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The search space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The objectives, in the order trials report them.
    pub fn objectives(&self) -> &[Objective] {
        &self.objectives
    }

    /// Successive-halving settings (`[search] halving`), if any.
    pub fn halving(&self) -> Option<&Halving> {
        self.halving.as_ref()
    }

    /// The configurations a sampler draws from the space: trial `i` is `configs[i]` (under
    /// successive halving, the first rung's).
    ///
    /// # Errors
    /// [`Error::Recipe`] naming the spec when the grid cannot be built (a float range with
    /// `grid_points = 1`, too many points), or halving without `[search] halving`.
    pub fn configs(&self, sampler: Sampler) -> Result<Vec<Params>> {
        let bad = |message: String| Error::Recipe { origin: self.origin.clone(), message };
        match sampler {
            Sampler::Grid => self.space.grid(self.grid_points).map_err(|error| bad(error.to_string())),
            Sampler::Random { trials, seed } => Ok(self.space.random(trials, seed)),
            Sampler::Halving { trials, seed } => {
                if self.halving.is_none() {
                    return Err(bad(
                        "the halving sampler needs [search] halving = { min_budget = .., max_budget = .. }".into(),
                    ));
                }
                if !self.uses_budget {
                    return Err(bad(format!(
                        "the halving sampler needs a recipe value that uses `{{{BUDGET}}}` (epochs, max_minutes ...)"
                    )));
                }
                Ok(self.space.random(trials, seed))
            }
        }
    }

    fn lookup(&self, name: &str, params: &Params, budget: Option<f64>, location: &str) -> Result<(Toml, String)> {
        if name == BUDGET {
            let budget = budget.or(self.halving.map(|halving| halving.max_budget)).unwrap_or(1.0);
            return Ok((budget_value(budget), budget_text(budget)));
        }
        let value = params.get(name).ok_or_else(|| Error::Recipe {
            origin: self.origin.clone(),
            message: format!("{location}: the trial {} has no parameter `{name}`", params.to_json()),
        })?;
        let toml = match value {
            Value::Int(value) => Toml::Integer(*value),
            Value::Float(value) => Toml::Float(*value),
            Value::Str(text) => match self.literals.get(name).and_then(|values| values.get(text)) {
                Some(literal) => literal.clone(),
                None => Toml::String(text.clone()),
            },
        };
        Ok((toml, value.to_string()))
    }

    fn fill(&self, value: &Toml, location: &str, params: &Params, budget: Option<f64>) -> Result<Toml> {
        Ok(match value {
            Toml::String(text) => {
                let parts = pieces(text).map_err(|reason| Error::Recipe {
                    origin: self.origin.clone(),
                    message: format!("{location}: {reason}"),
                })?;
                if let [Piece::Placeholder(name)] = parts.as_slice() {
                    return Ok(self.lookup(name, params, budget, location)?.0);
                }
                let mut filled = String::new();
                for part in parts {
                    match part {
                        Piece::Text(text) => filled.push_str(&text),
                        Piece::Placeholder(name) => filled.push_str(&self.lookup(&name, params, budget, location)?.1),
                    }
                }
                Toml::String(filled)
            }
            Toml::Array(items) => Toml::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| self.fill(item, &format!("{location}[{index}]"), params, budget))
                    .collect::<Result<_>>()?,
            ),
            Toml::Table(table) => Toml::Table(
                table
                    .iter()
                    .map(|(key, item)| Ok((key.clone(), self.fill(item, &join(location, key), params, budget)?)))
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The recipe of one trial as TOML text: every placeholder filled, and the steps whose
    /// `enabled` is false left out (`enabled` itself removed).
    ///
    /// # Errors
    /// [`Error::Recipe`] naming the spec when a placeholder names a parameter `params` lacks or
    /// an `enabled` value is not a boolean.
    pub fn recipe_toml(&self, params: &Params, budget: Option<f64>) -> Result<String> {
        let bad = |message: String| Error::Recipe { origin: self.origin.clone(), message };
        let Toml::Table(mut recipe) = self.fill(&Toml::Table(self.template.clone()), "", params, budget)? else {
            unreachable!("a table fills to a table")
        };
        if let Some(Toml::Array(steps)) = recipe.get_mut("steps") {
            let mut kept = Vec::with_capacity(steps.len());
            for (index, mut step) in std::mem::take(steps).into_iter().enumerate() {
                let enabled = match step.as_table_mut().and_then(|table| table.remove(ENABLED)) {
                    None | Some(Toml::Boolean(true)) => true,
                    Some(Toml::Boolean(false)) => false,
                    Some(other) => {
                        return Err(bad(format!(
                            "steps[{index}].{ENABLED} is {other} for {}: expected true or false",
                            describe_trial(params, budget)
                        )));
                    }
                };
                if enabled {
                    kept.push(step);
                }
            }
            *steps = kept;
        }
        toml::to_string(&recipe).map_err(|error| bad(error.to_string()))
    }

    /// The recipe of one trial, checked as [`Recipe::from_toml`] checks any recipe; errors name
    /// the spec and the trial's parameters.
    pub fn recipe(&self, params: &Params, budget: Option<f64>) -> Result<Recipe> {
        let text = self.recipe_toml(params, budget)?;
        Recipe::from_toml(&text, &format!("{} with {}", self.origin, describe_trial(params, budget)))
    }

    /// Checks the recipe of every configuration (at both ends of the halving budgets) before
    /// anything runs.
    fn check_recipes(&self, configs: &[Params], sampler: Sampler) -> Result<()> {
        let budgets: Vec<Option<f64>> = match (sampler, self.halving) {
            (Sampler::Halving { .. }, Some(halving)) => vec![Some(halving.min_budget), Some(halving.max_budget)],
            _ => vec![None],
        };
        for params in configs {
            for &budget in &budgets {
                self.recipe(params, budget)?;
            }
        }
        Ok(())
    }
}

/// How a study runs.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// How configurations are drawn.
    pub sampler: Sampler,
    /// Evaluation sentences, one per line (the shipped evaluation set when absent).
    pub eval: Option<PathBuf>,
    /// Trials run at once in this process (each on its own `threads`). Latencies measured side by
    /// side disturb each other on a small machine: keep 1 when latency is an objective.
    pub jobs: usize,
    /// Threads each trial runs on (lathe measures on one).
    pub threads: usize,
    /// Rerun trials the log records as failed.
    pub retry_failed: bool,
    /// Keep each trial's compressed model (`trials/<id>/model`). Off by default: a study of many
    /// trials would hold a model each (about 90 MB on MiniLM), and `trials/<id>/recipe.toml`
    /// rebuilds any of them with `lathe apply`.
    pub keep_models: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            sampler: Sampler::Grid,
            eval: None,
            jobs: 1,
            threads: 1,
            retry_failed: false,
            keep_models: false,
        }
    }
}

/// A study as it stands: the lathe-search report and its markdown (`pareto.md`).
#[derive(Debug, Clone)]
pub struct Searched {
    /// Every logged trial in id order.
    pub report: Report,
    /// The title, a summary line and the table with the Pareto front marked.
    pub markdown: String,
}

/// What [`run_trial`] did.
#[derive(Debug, Clone)]
pub enum TrialOutcome {
    /// The study log holds the trial already; nothing ran.
    Logged,
    /// Its result file exists already (waiting for [`collect`]); nothing ran.
    Written(PathBuf),
    /// The trial ran and its result file was written.
    Ran {
        /// The result (complete or failed).
        result: TrialResult,
        /// `<study>/results/<id>.json`.
        path: PathBuf,
    },
}

/// What a study was made from; a later run must agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    spec_sha256: String,
    model: String,
    eval_sha256: String,
    sampler: String,
    seed: Option<u64>,
}

/// The study in a folder, checked and ready to run.
struct Setup<'a> {
    spec: &'a Spec,
    sampler: Sampler,
    model: PathBuf,
    study_dir: PathBuf,
    sentences: Vec<String>,
    eval_sha256: String,
    configs: Vec<Params>,
    study: Study,
    threads: usize,
    keep_models: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().map_err(|error| Error::BadOption {
        option: "threads".into(),
        message: format!("cannot start {threads} threads: {error}"),
    })
}

/// Milliseconds to embed one sentence, one at a time: the median over [`eval::TIMED_RUNS`] runs
/// of the first [`LATENCY_SENTENCES`], divided by their number.
fn single_latency_ms(encoder: &SentenceEncoder, sentences: &[String]) -> Result<f64> {
    let subset = &sentences[..LATENCY_SENTENCES.min(sentences.len())];
    let (time, _) = eval::median_time(|| encoder.embed_sentences(subset, 1))?;
    Ok(time.as_secs_f64() * 1e3 / subset.len() as f64)
}

/// The original model's embeddings, size and latency.
struct Baseline {
    embeddings: Vec<f32>,
    dim: usize,
    size_bytes: u64,
    latency_ms: f64,
}

/// A value for a progress line: integers whole, small numbers in exponent form, else 6 decimals
/// without trailing zeros.
fn short(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 1e5 {
        format!("{value:.0}")
    } else if value.abs() < 1e-3 {
        format!("{value:.3e}")
    } else {
        format!("{value:.6}").trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

impl Setup<'_> {
    fn prepare<'a>(spec: &'a Spec, model: &Path, study_dir: &Path, options: &SearchOptions) -> Result<Setup<'a>> {
        let sentences = eval::sentences(options.eval.as_deref())?;
        let eval_sha256 = format!("{:x}", Sha256::digest(sentences.join("\n").as_bytes()));
        let configs = spec.configs(options.sampler)?;
        spec.check_recipes(&configs, options.sampler)?;
        if !model.is_dir() {
            return Err(Error::NotAFolder { path: model.to_path_buf() });
        }
        let model = std::fs::canonicalize(model).map_err(io_error(model))?;
        std::fs::create_dir_all(study_dir).map_err(io_error(study_dir))?;
        let study_dir = std::fs::canonicalize(study_dir).map_err(io_error(study_dir))?;
        let manifest = Manifest {
            spec_sha256: spec.digest.clone(),
            model: model.display().to_string(),
            eval_sha256: eval_sha256.clone(),
            sampler: options.sampler.name().to_owned(),
            seed: options.sampler.seed(),
        };
        check_manifest(&study_dir, &manifest)?;
        let study = Study::new(spec.objectives.clone())?
            .log(study_dir.join(LOG))
            .concurrency(options.jobs)
            .retry_failed(options.retry_failed);
        Ok(Setup {
            spec,
            sampler: options.sampler,
            model,
            study_dir,
            sentences,
            eval_sha256,
            configs,
            study,
            threads: options.threads.max(1),
            keep_models: options.keep_models,
        })
    }

    fn needs_latency(&self) -> bool {
        self.spec.objectives.iter().any(|objective| matches!(objective.name.as_str(), "latency_ms" | "speedup"))
    }

    /// The baseline from `baseline.safetensors` when it was made from this model and these
    /// sentences, else measured and written there.
    fn baseline(&self) -> Result<Baseline> {
        let path = self.study_dir.join(BASELINE);
        let model = self.model.display().to_string();
        if let Some(baseline) = self.cached_baseline(&path, &model) {
            return Ok(baseline);
        }
        eprintln!("measuring the original model {} on {} sentences", model, self.sentences.len());
        let (embeddings, dim, latency_ms) = thread_pool(self.threads)?.install(|| -> Result<_> {
            let encoder = SentenceEncoder::open(&self.model)?;
            let embeddings = encoder.embed_sentences(&self.sentences, eval::BATCH)?.as_slice().to_vec();
            Ok((embeddings, encoder.model().hidden_size(), single_latency_ms(&encoder, &self.sentences)?))
        })?;
        let size_bytes = eval::weights_size(&self.model)?;
        let metadata = [
            ("model".to_owned(), model),
            ("eval_sha256".to_owned(), self.eval_sha256.clone()),
            ("size_bytes".to_owned(), size_bytes.to_string()),
            ("latency_ms".to_owned(), format!("{latency_ms:?}")),
        ];
        let spec = TensorSpec::new(EMBEDDINGS, Dtype::F32, [self.sentences.len(), dim]);
        let mut writer = SafeTensorsWriter::create(&path, vec![spec], &metadata)?;
        writer.write_tensor(EMBEDDINGS, bytemuck::cast_slice(&embeddings))?;
        writer.finish()?;
        Ok(Baseline { embeddings, dim, size_bytes, latency_ms })
    }

    fn cached_baseline(&self, path: &Path, model: &str) -> Option<Baseline> {
        let file = SafeTensors::open(path).ok()?;
        let metadata: BTreeMap<&str, &str> =
            file.metadata().iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        if metadata.get("model") != Some(&model) || metadata.get("eval_sha256") != Some(&self.eval_sha256.as_str()) {
            return None;
        }
        let tensor = file.tensor(EMBEDDINGS).ok()?;
        let &[rows, dim] = tensor.shape() else { return None };
        if rows != self.sentences.len() || dim == 0 {
            return None;
        }
        Some(Baseline {
            embeddings: tensor.to_f32().ok()?,
            dim,
            size_bytes: metadata.get("size_bytes")?.parse().ok()?,
            latency_ms: metadata.get("latency_ms")?.parse().ok()?,
        })
    }

    /// Applies one trial's recipe into `trials/<id>/model` and measures it: one value per
    /// objective, in the spec's order. The model folder is removed afterwards, measured or not,
    /// unless the study keeps models.
    fn measure(&self, baseline: &Baseline, id: u64, params: &Params, budget: Option<f64>) -> Result<Vec<f64>> {
        let text = self.spec.recipe_toml(params, budget)?;
        let recipe =
            Recipe::from_toml(&text, &format!("{} with {}", self.spec.origin, describe_trial(params, budget)))?;
        let dir = self.study_dir.join("trials").join(id.to_string());
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        lathe_tensor::write_atomic(dir.join("recipe.toml"), text.as_bytes())?;
        let model_dir = dir.join("model");
        let measured = thread_pool(self.threads)?.install(|| {
            let start = Instant::now();
            let out = recipe.apply(&self.model, &model_dir)?;
            let compress_seconds = start.elapsed().as_secs_f64();
            let encoder = SentenceEncoder::open(&out)?;
            let dim = encoder.model().hidden_size();
            if dim != baseline.dim {
                return Err(Error::WidthMismatch { model: dim, reference: baseline.dim });
            }
            let embeddings = encoder.embed_sentences(&self.sentences, eval::BATCH)?;
            let fidelity = eval::fidelity(&baseline.embeddings, embeddings.as_slice(), dim)?;
            let latency_ms =
                if self.needs_latency() { single_latency_ms(&encoder, &self.sentences)? } else { f64::NAN };
            let size_bytes = eval::weights_size(&out)?;
            let values = self
                .spec
                .objectives
                .iter()
                .map(|objective| match objective.name.as_str() {
                    "mean_cosine" => fidelity.mean_cosine,
                    "min_cosine" => fidelity.min_cosine,
                    "spearman" => fidelity.spearman.unwrap_or(f64::NAN),
                    "top1_agreement" => fidelity.top1_agreement,
                    "size_bytes" => size_bytes as f64,
                    "size_mb" => size_bytes as f64 / 1e6,
                    "compression" => baseline.size_bytes as f64 / size_bytes.max(1) as f64,
                    "latency_ms" => latency_ms,
                    "speedup" => baseline.latency_ms / latency_ms,
                    "compress_seconds" => compress_seconds,
                    other => unreachable!("objective `{other}` was checked when the spec was parsed"),
                })
                .collect();
            Ok(values)
        });
        if !self.keep_models && model_dir.exists() {
            std::fs::remove_dir_all(&model_dir).map_err(io_error(&model_dir))?;
        }
        measured
    }

    /// [`Setup::measure`] as a lathe-search objective, with a progress line on stderr.
    fn objective(&self, baseline: &Baseline, trial: &TrialInput<'_>) -> std::result::Result<Vec<f64>, TrialError> {
        let what = format!("trial {} {}", trial.id, describe_trial(trial.params, trial.budget));
        match self.measure(baseline, trial.id, trial.params, trial.budget) {
            Ok(values) => {
                let shown: Vec<String> = self
                    .spec
                    .objectives
                    .iter()
                    .zip(&values)
                    .map(|(objective, value)| format!("{} {}", objective.name, short(*value)))
                    .collect();
                eprintln!("{what}: {}", shown.join(", "));
                Ok(values)
            }
            Err(error) => {
                eprintln!("{what} failed: {error}");
                Err(TrialError::Failed(error.to_string()))
            }
        }
    }

    /// The report as markdown, written to `pareto.md`.
    fn publish(&self, report: Report) -> Result<Searched> {
        let markdown = self.render(&report);
        lathe_tensor::write_atomic(self.study_dir.join(PARETO), markdown.as_bytes())?;
        Ok(Searched { report, markdown })
    }

    fn render(&self, report: &Report) -> String {
        let complete = report.trials.iter().filter(|trial| trial.status == Status::Complete).count();
        let failed = report.trials.len() - complete;
        let front: Vec<String> = report.pareto_ids().iter().map(u64::to_string).collect();
        let objectives: Vec<String> = self
            .spec
            .objectives
            .iter()
            .map(|objective| {
                let direction = if objective.direction == Direction::Maximize { "max" } else { "min" };
                format!("{} ({direction})", objective.name)
            })
            .collect();
        let planned = match self.sampler {
            Sampler::Halving { .. } => String::new(),
            _ => format!(" of {}", self.configs.len()),
        };
        let mut text = format!("# lathe search: {} on {}\n\n", self.spec.origin, self.model.display());
        text.push_str(&format!(
            "{} trials{planned} logged ({complete} complete, {failed} failed; sampler: {}). Objectives: {}.\n",
            report.trials.len(),
            self.sampler.describe(),
            objectives.join(", ")
        ));
        let front = if front.is_empty() { "none".to_owned() } else { format!("trials {}", front.join(", ")) };
        text.push_str(&format!(
            "Pareto front (marked *): {front}. Each trial's recipe and model: trials/<id>/recipe.toml and \
             trials/<id>/model in {}.\n\n",
            self.study_dir.display()
        ));
        text.push_str(&report.table());
        text
    }
}

/// Whether a study folder holds no trial yet: no log line and no result file.
fn is_empty_study(study_dir: &Path) -> bool {
    let log_empty = std::fs::metadata(study_dir.join(LOG)).map_or(true, |metadata| metadata.len() == 0);
    let no_results = std::fs::read_dir(study_dir.join("results")).map_or(true, |mut entries| entries.next().is_none());
    log_empty && no_results
}

/// Writes the manifest of a new study (or of one that holds no trial yet, so a run that failed
/// before its first trial can be corrected), or checks an existing one says the same.
fn check_manifest(study_dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = &study_dir.join(MANIFEST);
    let written = match std::fs::read_to_string(path) {
        Ok(text) if !is_empty_study(study_dir) => text,
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io { path: path.to_path_buf(), source: error });
        }
        _ => {
            let mut text = serde_json::to_string_pretty(manifest)?;
            text.push('\n');
            lathe_tensor::write_atomic(path, text.as_bytes())?;
            return Ok(());
        }
    };
    let found: Manifest =
        serde_json::from_str(&written).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
    let differs = |what: &str, was: String, now: String| Error::Recipe {
        origin: path.display().to_string(),
        message: format!("the study was made with {what} {was}, this run has {now}: use another study folder"),
    };
    if found.spec_sha256 != manifest.spec_sha256 {
        return Err(differs("another spec: sha256", found.spec_sha256, manifest.spec_sha256.clone()));
    }
    if found.model != manifest.model {
        return Err(differs("the model", found.model, manifest.model.clone()));
    }
    if found.eval_sha256 != manifest.eval_sha256 {
        return Err(differs("evaluation sentences of sha256", found.eval_sha256, manifest.eval_sha256.clone()));
    }
    let sampler = |m: &Manifest| match m.seed {
        Some(seed) => format!("{} (seed {seed})", m.sampler),
        None => m.sampler.clone(),
    };
    if (&found.sampler, found.seed) != (&manifest.sampler, manifest.seed) {
        return Err(differs("the sampler", sampler(&found), sampler(manifest)));
    }
    Ok(())
}

/// Runs the study in `study_dir` on `model`: every trial the log does not hold yet, `jobs` at a
/// time, then writes `pareto.md`. Progress (one line per trial) goes to stderr.
///
/// # Errors
/// Spec and option errors before anything is written (every trial's recipe is checked first), a
/// study folder made from another spec, model, evaluation set or sampler, and errors measuring
/// the original model. A trial that fails is logged as failed and the study goes on.
pub fn search(spec: &Spec, model: &Path, study_dir: &Path, options: &SearchOptions) -> Result<Searched> {
    let setup = Setup::prepare(spec, model, study_dir, options)?;
    let baseline = setup.baseline()?;
    let objective = |trial: &TrialInput<'_>| setup.objective(&baseline, trial);
    let report = match (options.sampler, spec.halving) {
        (Sampler::Halving { .. }, Some(halving)) => setup.study.run_halving(&setup.configs, &halving, objective),
        _ => setup.study.run(&setup.configs, objective),
    }?;
    eprintln!("{} trials run, {} taken from {}", report.evaluated, report.resumed, setup.study_dir.join(LOG).display());
    setup.publish(report)
}

fn no_batch(sampler: Sampler, what: &str) -> Result<()> {
    if let Sampler::Halving { .. } = sampler {
        return Err(Error::BadOption {
            option: what.into(),
            message: "works with the grid and random samplers (successive halving picks each rung from the last)"
                .into(),
        });
    }
    Ok(())
}

/// The command lines of the trials the log does not hold yet, one per trial: `template` with
/// `{trial}` replaced by the trial id (literal braces doubled), for GNU parallel, a Slurm array
/// or plain `sh`. Each line should run [`run_trial`] on the same spec, model, study folder and
/// options. The study folder is prepared first (manifest, the original model's embeddings), so
/// the jobs start from a measured baseline.
pub fn emit(
    spec: &Spec,
    model: &Path,
    study_dir: &Path,
    options: &SearchOptions,
    template: &str,
) -> Result<Vec<String>> {
    no_batch(options.sampler, "emit")?;
    let setup = Setup::prepare(spec, model, study_dir, options)?;
    setup.baseline()?;
    Ok(setup.study.emit(&setup.configs, template)?)
}

/// Runs trial `id` alone and writes `<study>/results/<id>.json` for [`collect`], unless the log
/// or a result file holds it already.
pub fn run_trial(
    spec: &Spec,
    model: &Path,
    study_dir: &Path,
    options: &SearchOptions,
    id: u64,
) -> Result<TrialOutcome> {
    no_batch(options.sampler, "trial")?;
    let setup = Setup::prepare(spec, model, study_dir, options)?;
    let Some(params) = usize::try_from(id).ok().and_then(|index| setup.configs.get(index)) else {
        return Err(Error::BadOption {
            option: "trial".into(),
            message: format!("{id}: the study has trials 0 to {}", setup.configs.len().saturating_sub(1)),
        });
    };
    let logged = setup.study.load(&setup.configs)?;
    if logged.trials.iter().any(|trial| trial.id == id) {
        return Ok(TrialOutcome::Logged);
    }
    let results = setup.study_dir.join("results");
    let path = TrialResult::path(&results, id);
    if path.is_file() {
        return Ok(TrialOutcome::Written(path));
    }
    let baseline = setup.baseline()?;
    let start = Instant::now();
    let input = TrialInput { id, params, budget: None };
    let result = match setup.objective(&baseline, &input) {
        Ok(values) => {
            let named = setup.spec.objectives.iter().map(|objective| objective.name.clone()).zip(values.clone());
            match values.iter().position(|value| !value.is_finite()) {
                None => TrialResult::complete(named),
                Some(index) => {
                    TrialResult::failed(format!("objective {} is {}", setup.spec.objectives[index].name, values[index]))
                }
            }
        }
        Err(TrialError::Failed(message) | TrialError::Abort(message)) => TrialResult::failed(message),
    }
    .with_seconds(start.elapsed().as_secs_f64());
    let path = result.write(&results, id)?;
    Ok(TrialOutcome::Ran { result, path })
}

/// Appends the result files of `results_dir` (`<study>/results` when `None`) to the study log
/// and writes `pareto.md` for every logged trial.
pub fn collect(
    spec: &Spec,
    model: &Path,
    study_dir: &Path,
    options: &SearchOptions,
    results_dir: Option<&Path>,
) -> Result<(Collected, Searched)> {
    no_batch(options.sampler, "collect")?;
    let setup = Setup::prepare(spec, model, study_dir, options)?;
    let results = results_dir.map_or_else(|| setup.study_dir.join("results"), Path::to_path_buf);
    let collected = setup.study.collect(&setup.configs, &results)?;
    let report = setup.study.load(&setup.configs)?;
    Ok((collected, setup.publish(report)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRUNE: &str = "name = \"magnitude {sparsity} / {scheme}\"\n\
        objectives = [\"mean_cosine\", \"size_mb:min\"]\n\
        [space]\nsparsity = { float = [0.2, 0.6] }\nscheme = [\"q8_0\", \"int8-channel\"]\nint8 = { choice = [false, true] }\n\
        [search]\ngrid_points = 3\n\
        [[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\n\
        [[steps]]\nenabled = \"{int8}\"\nstep = \"quantize\"\nscheme = \"{scheme}\"\n";

    fn error(text: &str) -> String {
        Spec::from_toml(text, "bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn placeholders_keep_numbers_numbers_and_steps_can_be_switched_off() {
        let spec = Spec::from_toml(PRUNE, "prune.toml").unwrap();
        assert_eq!(spec.objectives(), [Objective::maximize("mean_cosine"), Objective::minimize("size_mb")]);
        let configs = spec.configs(Sampler::Grid).unwrap();
        assert_eq!(configs.len(), 3 * 2 * 2);
        // Declaration order is kept by the grid only through the table's key order; find by value.
        let params = Params::new().with("int8", "true").with("scheme", "q8_0").with("sparsity", 0.4);
        assert!(configs.contains(&params), "{configs:?}");
        let text = spec.recipe_toml(&params, None).unwrap();
        let parsed: Table = toml::from_str(&text).unwrap();
        let steps = parsed["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0]["sparsity"], Toml::Float(0.4));
        assert_eq!(steps[1]["scheme"], Toml::String("q8_0".into()));
        assert!(steps[1].get("enabled").is_none(), "{text}");
        assert_eq!(parsed["name"], Toml::String("magnitude 0.4 / q8_0".into()));
        let recipe = spec.recipe(&params, None).unwrap();
        assert_eq!(recipe.steps.len(), 2);

        let off = params.with("int8", "false");
        let recipe = spec.recipe(&off, None).unwrap();
        assert_eq!(recipe.steps.len(), 1);
        assert_eq!(recipe.steps[0].describe(), "prune magnitude 40%");
    }

    #[test]
    fn lists_integers_braces_and_budgets_fill_in() {
        let spec = Spec::from_toml(
            "name = \"{{literal}} {layers} x{heads}\"\n\
             [space]\nlayers = { choice = [[0, 2, 4], [0, 5]] }\nheads = { int = [4, 12], step = 4 }\n\
             [search]\nhalving = { min_budget = 1, max_budget = 4, eta = 2 }\n\
             [[steps]]\nstep = \"shrink\"\nkeep_layers = \"{layers}\"\nkeep_heads = \"{heads}\"\nkeep_ffn = \"{budget}\"\n",
            "shrink.toml",
        )
        .unwrap();
        let configs = spec.configs(Sampler::Grid).unwrap();
        assert_eq!(configs.len(), 2 * 3);
        // Parameters in name order, the last varying fastest: heads 4 with both lists, then 8 ...
        assert_eq!(configs[0].str("layers"), Some("[0, 2, 4]"));
        assert_eq!(configs[1].str("layers"), Some("[0, 5]"));
        let text = spec.recipe_toml(&configs[2], Some(2.5)).unwrap();
        let parsed: Table = toml::from_str(&text).unwrap();
        let step = &parsed["steps"][0];
        assert_eq!(step["keep_layers"], Toml::Array(vec![Toml::Integer(0), Toml::Integer(2), Toml::Integer(4)]));
        assert_eq!(step["keep_heads"], Toml::Integer(8));
        assert_eq!(step["keep_ffn"], Toml::Float(2.5));
        assert_eq!(parsed["name"], Toml::String("{literal} [0, 2, 4] x8".into()));
        // Whole budgets are integers (for integer keys); without halving the budget is the max.
        let text = spec.recipe_toml(&configs[0], None).unwrap();
        assert!(text.contains("keep_ffn = 4\n"), "{text}");
        assert!(matches!(spec.configs(Sampler::Halving { trials: 4, seed: 1 }), Ok(configs) if configs.len() == 4));
    }

    #[test]
    fn samplers_are_deterministic_for_a_seed() {
        let spec = Spec::from_toml(PRUNE, "prune.toml").unwrap();
        let random = spec.configs(Sampler::Random { trials: 6, seed: 9 }).unwrap();
        assert_eq!(random, spec.configs(Sampler::Random { trials: 6, seed: 9 }).unwrap());
        assert_ne!(random, spec.configs(Sampler::Random { trials: 6, seed: 10 }).unwrap());
        assert_eq!(random[..4], spec.configs(Sampler::Random { trials: 4, seed: 9 }).unwrap()[..]);
        assert_eq!(spec.configs(Sampler::Grid).unwrap(), spec.configs(Sampler::Grid).unwrap());
        // Halving needs [search] halving and a recipe value that uses {budget}.
        let message = spec.configs(Sampler::Halving { trials: 4, seed: 1 }).unwrap_err().to_string();
        assert!(message.starts_with("prune.toml: ") && message.contains("halving"), "{message}");
    }

    #[test]
    fn bad_specs_name_the_file_and_the_problem() {
        let step = "[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{sparsity}\"\n";
        let space = "[space]\nsparsity = { float = [0.2, 0.6] }\n";
        for (text, expected) in [
            (
                format!("{space}[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{{sparsty}}\"\n"),
                "steps[0].sparsity: unknown placeholder `{sparsty}`",
            ),
            (format!("[space]\nsparsity = {{ float = [0.6, 0.2] }}\n{step}"), "low 0.6 above high 0.2"),
            (format!("[space]\nsparsity = {{ float = [0.2, 0.6], log = 1 }}\n{step}"), "log = 1"),
            (format!("[space]\nsparsity = {{ floats = [0.2, 0.6] }}\n{step}"), "expected { float"),
            (format!("[space]\nsparsity = {{ float = [0.2] }}\n{step}"), "[low, high]"),
            (format!("[space]\nsparsity = {{ int = [1, 3], log = true }}\n{step}"), "unknown key `log`"),
            (format!("{space}other = [1, 2]\n{step}"), "[space] other: no value of the recipe uses `{other}`"),
            (format!("objectives = [\"accuracy:max\"]\n{space}{step}"), "unknown objective `accuracy`"),
            (format!("objectives = [\"mean_cosine:up\"]\n{space}{step}"), "neither min nor max"),
            (format!("objectives = [\"size_mb\", \"size_mb:max\"]\n{space}{step}"), "listed twice"),
            (format!("{space}[search]\ngrid = 3\n{step}"), "unknown key `grid`"),
            (format!("{space}[search]\nhalving = {{ min_budget = 4, max_budget = 1 }}\n{step}"), "max budget"),
            (format!("{space}{step}epochs = \"{{budget}}\"\n"), "needs [search] halving"),
            (format!("[space]\nbudget = [1, 2]\n{step}"), "reserved"),
            (
                format!("{space}[[steps]]\nstep = \"prune\"\nmethod = \"magnitude\"\nsparsity = \"{{sparsity\"\n"),
                "not closed",
            ),
            ("objectives = [".to_owned(), "bad.toml"),
        ] {
            let message = error(&text);
            assert!(message.starts_with("bad.toml: ") && message.contains(expected), "{text}\n{message}");
        }
        // Recipe keys are checked per trial, naming the spec and the trial.
        let spec = Spec::from_toml(&format!("[space]\nsparsity = {{ float = [0.5, 1.5] }}\n{step}"), "s.toml").unwrap();
        let configs = spec.configs(Sampler::Grid).unwrap();
        let message = spec.check_recipes(&configs, Sampler::Grid).unwrap_err().to_string();
        assert!(message.starts_with("s.toml with {\"sparsity\":1.5}: step 1: --sparsity"), "{message}");
        let switch = format!("{space}flag = [\"yes\"]\n{step}enabled = \"{{flag}}\"\n");
        let spec = Spec::from_toml(&switch, "s.toml").unwrap();
        let message = spec.recipe_toml(&spec.configs(Sampler::Grid).unwrap()[0], None).unwrap_err().to_string();
        assert!(message.contains("steps[0].enabled is \"yes\""), "{message}");
        let message = spec.configs(Sampler::Halving { trials: 2, seed: 0 }).unwrap_err().to_string();
        assert!(message.contains("[search] halving"), "{message}");
    }

    #[test]
    fn samplers_parse_from_the_command_line() {
        assert_eq!(Sampler::from_name("grid", None, 3).unwrap(), Sampler::Grid);
        assert_eq!(Sampler::from_name("random", Some(5), 3).unwrap(), Sampler::Random { trials: 5, seed: 3 });
        assert_eq!(Sampler::from_name("halving", Some(9), 0).unwrap(), Sampler::Halving { trials: 9, seed: 0 });
        for (name, trials, expected) in [
            ("grid", Some(4), "--trials"),
            ("random", None, "--trials N"),
            ("random", Some(0), "0"),
            ("tpe", None, "tpe"),
        ] {
            let message = Sampler::from_name(name, trials, 0).unwrap_err().to_string();
            assert!(message.contains(expected), "{name}: {message}");
        }
    }

    #[test]
    fn the_shipped_examples_parse() {
        for (text, origin) in [
            (include_str!("../../../examples/search-prune.toml"), "search-prune.toml"),
            (include_str!("../../../examples/search-distill.toml"), "search-distill.toml"),
        ] {
            let spec = Spec::from_toml(text, origin).unwrap();
            let configs = spec.configs(Sampler::Grid).unwrap();
            assert!(!configs.is_empty());
            for params in &configs {
                spec.recipe_toml(params, None).unwrap();
            }
        }
        let spec = Spec::from_toml(include_str!("../../../examples/search-prune.toml"), "search-prune.toml").unwrap();
        let configs = spec.configs(Sampler::Grid).unwrap();
        assert_eq!(configs.len(), 10);
        spec.check_recipes(&configs, Sampler::Grid).unwrap();
        let spec =
            Spec::from_toml(include_str!("../../../examples/search-distill.toml"), "search-distill.toml").unwrap();
        let halving = Sampler::Halving { trials: 9, seed: 1 };
        spec.check_recipes(&spec.configs(halving).unwrap(), halving).unwrap();
        let configs = spec.configs(Sampler::Grid).unwrap();
        assert_eq!(configs.len(), 9);
        spec.check_recipes(&configs, Sampler::Grid).unwrap();
    }
}
