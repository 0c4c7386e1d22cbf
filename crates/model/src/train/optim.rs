//! AdamW, the learning-rate schedule and gradient clipping, with PyTorch's and transformers'
//! semantics.

use super::params::{BertParams, Weights};

/// AdamW's hyperparameters other than the learning rate (which comes from a [`Schedule`] at
/// each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay of the first moment (0.9).
    pub beta1: f32,
    /// Decay of the second moment (0.999).
    pub beta2: f32,
    /// Added to the bias-corrected root of the second moment (1e-8).
    pub eps: f32,
    /// Decoupled weight decay, applied as `p -= lr * weight_decay * p` to embeddings and linear
    /// weights only (0.01, transformers' usual choice).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW (Loshchilov and Hutter) over a [`BertParams`], step for step as `torch.optim.AdamW`:
///
/// ```text
/// p <- p (1 - lr wd)                      (only where the parameter decays)
/// m <- b1 m + (1 - b1) g
/// v <- b2 v + (1 - b2) g^2
/// p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// ```
///
/// Biases and LayerNorm parameters do not decay ([`ParamSpec::decays`](super::ParamSpec::decays)).
/// Every parameter is updated every step, rows of embeddings the batch did not use included
/// (their moments decay), as PyTorch does with dense gradients.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    first: Weights,
    second: Weights,
    decays: Vec<bool>,
    steps: u64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &BertParams, config: AdamWConfig) -> AdamW {
        let first = params.zero_grads();
        let second = first.clone();
        let decays = params.specs().iter().map(|spec| spec.decays()).collect();
        AdamW { config, first, second, decays, steps: 0 }
    }

    /// The hyperparameters.
    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of `params` with gradients `grads` and learning rate `lr`.
    ///
    /// # Panics
    /// If `params` or `grads` do not have the shapes the optimizer was made for.
    pub fn step(&mut self, params: &mut BertParams, grads: &Weights, lr: f32) {
        assert!(
            self.first.same_shapes(params.weights()) && self.first.same_shapes(grads),
            "AdamW::step needs the parameters it was made for and gradients of their shapes"
        );
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let correction1 = 1.0 - f64::from(beta1).powi(t);
        let correction2 = 1.0 - f64::from(beta2).powi(t);
        let step_size = (f64::from(lr) / correction1) as f32;
        let correction2_sqrt = correction2.sqrt() as f32;
        let decay_factor = 1.0 - lr * weight_decay;
        let tensors = params.weights_mut().tensors_mut().into_iter().zip(grads.tensors());
        let moments = self.first.tensors_mut().into_iter().zip(self.second.tensors_mut());
        for (((param, grad), (first, second)), &decays) in tensors.zip(moments).zip(&self.decays) {
            for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
                if decays {
                    *p *= decay_factor;
                }
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let denominator = v.sqrt() / correction2_sqrt + eps;
                *p -= step_size * *m / denominator;
            }
        }
    }
}

/// How the learning rate falls after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decay {
    /// Linearly to 0 at the last step (transformers' `get_linear_schedule_with_warmup`).
    Linear,
    /// Half a cosine to 0 at the last step (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// Constant after warmup.
    Constant,
}

/// A learning-rate schedule with linear warmup, scaled to the run's total steps, with
/// transformers' conventions: the rate for step `s` (counted from 0, the number of optimizer
/// steps already taken) is `peak * s / warmup` during warmup (so the very first step has rate
/// 0 when there is warmup), then falls as [`Decay`] says, reaching 0 at `s = total_steps`.
///
/// ```
/// use lathe_model::train::{Decay, Schedule};
/// let schedule = Schedule { peak_lr: 1e-3, warmup_steps: 10, total_steps: 110, decay: Decay::Linear };
/// assert_eq!(schedule.lr(5), 5e-4);
/// assert_eq!(schedule.lr(10), 1e-3);
/// assert_eq!(schedule.lr(60), 5e-4);
/// assert_eq!(schedule.lr(110), 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The rate at the end of warmup.
    pub peak_lr: f32,
    /// Steps of linear warmup from 0.
    pub warmup_steps: u64,
    /// Steps in the whole run.
    pub total_steps: u64,
    /// What happens after warmup.
    pub decay: Decay,
}

impl Schedule {
    /// A schedule whose warmup is `warmup_fraction` of `total_steps` (rounded up, as
    /// transformers' `warmup_ratio` is).
    pub fn with_warmup_fraction(peak_lr: f32, warmup_fraction: f64, total_steps: u64, decay: Decay) -> Schedule {
        let warmup_steps = (warmup_fraction.clamp(0.0, 1.0) * total_steps as f64).ceil() as u64;
        Schedule { peak_lr, warmup_steps, total_steps, decay }
    }

    /// The multiplier of the peak rate at step `step`, in `[0, 1]`.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let after = (step - self.warmup_steps) as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => ((span - after) / span).max(0.0),
            Decay::Cosine => {
                let progress = (after / span).min(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate at step `step`.
    pub fn lr(&self, step: u64) -> f32 {
        (f64::from(self.peak_lr) * self.factor(step)) as f32
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (multiplied by `max_norm / (norm + 1e-6)` when that is
/// below 1), and returns the norm before clipping. A non-finite norm (an overflowed or NaN
/// gradient) is returned without touching `grads`, so the caller can skip the step.
pub fn clip_grad_norm(grads: &mut Weights, max_norm: f32) -> f64 {
    let norm = grads.norm();
    if !norm.is_finite() {
        return norm;
    }
    let coefficient = f64::from(max_norm) / (norm + 1e-6);
    if coefficient < 1.0 {
        grads.scale(coefficient as f32);
    }
    norm
}
