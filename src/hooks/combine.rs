//! Interventions built from others: one at a fraction or a multiple of its
//! strength ([`Blend`]), and one shared by several owners ([`Shared`]), which
//! is how a server's loaded steers serve many requests at once.

use std::cell::RefCell;
use std::rc::Rc;

use tch::Tensor;

use super::intervention::{HookContext, Intervention};
use super::names::HookPoint;
use super::row_edit::RowEdit;
use crate::error::Result;

/// `inner` at `weight` times its strength: where it changes an activation
/// `a` into `a'`, this gives `a + weight · (a' − a)`. Weight 1 is `inner`
/// itself, 0 does nothing, 2 doubles an added vector.
pub struct Blend<I> {
    pub weight: f64,
    pub inner: I,
}

impl<I: Intervention> Intervention for Blend<I> {
    fn wants(&self, hook: HookPoint) -> bool {
        self.inner.wants(hook)
    }

    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        let Some(changed) = self.inner.apply(hook, act, ctx)? else {
            return Ok(None);
        };
        let delta = changed.f_sub(act)?.f_mul_scalar(self.weight)?;
        Ok(Some(act.f_add(&delta)?))
    }

    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        let weight = self.weight as f32;
        Ok(self
            .inner
            .row_edits(hook, ctx)?
            .map(|edits| vec![RowEdit::Blend { weight, edits }]))
    }
}

/// One intervention used by several owners in turn (one thread): each call
/// borrows it for that call only. Hooks call interventions one at a time, so
/// two requests may carry the same loaded steer in one forward pass.
pub struct Shared<I: ?Sized>(pub Rc<RefCell<I>>);

impl<I: ?Sized> Clone for Shared<I> {
    fn clone(&self) -> Self {
        Shared(Rc::clone(&self.0))
    }
}

impl<I: Intervention + ?Sized> Intervention for Shared<I> {
    fn wants(&self, hook: HookPoint) -> bool {
        self.0.borrow().wants(hook)
    }

    fn apply(
        &mut self,
        hook: HookPoint,
        act: &Tensor,
        ctx: &HookContext,
    ) -> Result<Option<Tensor>> {
        self.0.borrow_mut().apply(hook, act, ctx)
    }

    fn row_edits(&mut self, hook: HookPoint, ctx: &HookContext) -> Result<Option<Vec<RowEdit>>> {
        self.0.borrow_mut().row_edits(hook, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{BlockSite, FnIntervention};

    #[test]
    fn a_blend_scales_the_change_on_both_paths() {
        let hook = HookPoint::Block(0, BlockSite::ResidPost);
        let add_two = FnIntervention::new(vec![hook], |_, a: &Tensor, _: &HookContext| {
            Ok(Some(a + 2.0))
        });
        let mut half = Blend {
            weight: 0.5,
            inner: add_two,
        };
        let positions = Tensor::zeros([1, 1], (tch::Kind::Int64, tch::Device::Cpu));
        let ctx = HookContext {
            position_offset: 0,
            positions: &positions,
            decode_step: false,
            model_kind: tch::Kind::Float,
        };
        let act = Tensor::from_slice(&[1.0f32, -1.0]);
        let out = half.apply(hook, &act, &ctx).unwrap().unwrap();
        assert_eq!(Vec::<f32>::try_from(out).unwrap(), [2.0, 0.0]);
        // A closure has no row edits, so neither has its blend.
        assert!(half.row_edits(hook, &ctx).unwrap().is_none());
        // Two owners of one shared intervention see the same state.
        let shared = Shared(Rc::new(RefCell::new(half)));
        let mut other = shared.clone();
        assert!(other.wants(hook) && !other.wants(HookPoint::Embed));
        let out = other.apply(hook, &act, &ctx).unwrap().unwrap();
        assert_eq!(Vec::<f32>::try_from(out).unwrap(), [2.0, 0.0]);
        assert_eq!(Rc::strong_count(&shared.0), 2);
    }
}
