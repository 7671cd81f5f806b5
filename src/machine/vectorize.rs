//! `vectorized_fn!`: one loop body compiled for every CPU tier, chosen at run
//! time. Written as a macro because Rust compiles a function for extra
//! instructions only through `#[target_feature]` on that function itself (a
//! closure passed into one is compiled without them, while an inner function
//! marked `inline(always)` is compiled into it), and no crate offers this for
//! generic functions with our tier switch.

/// Defines `fn $name<generics>(args)`, whose `$body` runs compiled for
/// AVX-512 or for AVX2+FMA when [`active`](super::cpu::active) allows, so that
/// its loops vectorise 16 or 8 lanes wide, and as plain code otherwise
/// (which on aarch64 is NEON). Generics go in brackets,
/// `fn name[E: Element](..)`, and must be inferable from the arguments.
#[macro_export]
#[doc(hidden)]
macro_rules! vectorized_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident[$($gen:tt)*]($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name<$($gen)*>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$($gen)*>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::machine::cpu::{active, CpuTier};
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
                unsafe fn avx512<$($gen)*>($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$($gen)*>($($arg: $ty),*) {
                    body($($arg),*)
                }
                match active() {
                    // SAFETY: `active` never exceeds the CPU's detected tier.
                    CpuTier::Avx512 | CpuTier::Avx512Bf16 => return unsafe { avx512($($arg),*) },
                    CpuTier::Avx2 => return unsafe { avx2($($arg),*) },
                    CpuTier::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub use vectorized_fn;
