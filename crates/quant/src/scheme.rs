//! Storage schemes for weights, named as users write them (`q4_0`, `int4-g128-asym`).
//!
//! Grammar (ASCII case is ignored; [`Display`](fmt::Display) writes lower case):
//!
//! ```text
//! scheme      = "f16" | "bf16" | "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | int-scheme
//! int-scheme  = ( "int8-tensor" | "int8-channel" | "int8-g" N | "int4-channel" | "int4-g" N ) [ "-asym" ]
//! N           = decimal integer >= 1, no sign, no leading zero
//! ```
//!
//! Integer schemes are symmetric unless suffixed `-asym`. A scheme describes the weights only.

use std::fmt;
use std::mem::size_of;
use std::num::NonZeroUsize;
use std::str::FromStr;

use crate::ggml::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK};
use crate::{Error, Result};

/// How a weight matrix is stored.
///
/// ```
/// use lathe_quant::Scheme;
/// let scheme: Scheme = "int4-g128-asym".parse()?;
/// assert_eq!(scheme.to_string(), "int4-g128-asym");
/// assert_eq!(scheme.block_size(), 128);
/// assert_eq!("q4_0".parse::<Scheme>()?.bits_per_weight(), 4.5);
/// assert!("int4-g0".parse::<Scheme>().is_err());
/// # Ok::<(), lathe_quant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// GGML Q8_0: blocks of 32 int8 with an f16 scale.
    Q8_0,
    /// GGML Q4_0: blocks of 32 4-bit values with an f16 scale.
    Q4_0,
    /// GGML Q4_1: blocks of 32 4-bit values with an f16 scale and an f16 minimum.
    Q4_1,
    /// GGML Q5_0: blocks of 32 5-bit values with an f16 scale.
    Q5_0,
    /// GGML Q5_1: blocks of 32 5-bit values with an f16 scale and an f16 minimum.
    Q5_1,
    /// Integer linear quantization with compressed-tensors semantics.
    Int(IntScheme),
}

/// Width of the integers of an [`IntScheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 4-bit integers in `-8..=7`.
    Int4,
    /// 8-bit integers in `-128..=127`.
    Int8,
}

impl Bits {
    /// Number of bits: 4 or 8.
    pub const fn bits(self) -> u32 {
        match self {
            Bits::Int4 => 4,
            Bits::Int8 => 8,
        }
    }

    /// Smallest quantized value: -8 or -128.
    pub const fn qmin(self) -> i8 {
        match self {
            Bits::Int4 => -8,
            Bits::Int8 => -128,
        }
    }

    /// Largest quantized value: 7 or 127.
    pub const fn qmax(self) -> i8 {
        match self {
            Bits::Int4 => 7,
            Bits::Int8 => 127,
        }
    }
}

/// Which weights share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole matrix.
    Tensor,
    /// One scale per row (output channel).
    Channel,
    /// One scale per run of this many consecutive columns within a row.
    Group(NonZeroUsize),
}

/// An integer linear scheme: bits, scale granularity and symmetry.
///
/// Built by [`IntScheme::new`] or parsed (`"int8-channel".parse()`), so every value is one the
/// grammar can name: `int4-tensor` does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntScheme {
    bits: Bits,
    granularity: Granularity,
    symmetric: bool,
}

impl IntScheme {
    /// The scheme with these parts.
    ///
    /// # Errors
    /// [`Error::BadScheme`] for int4 with one scale per tensor: 16 levels across a whole matrix
    /// lose too much, so the grammar leaves it out.
    pub fn new(bits: Bits, granularity: Granularity, symmetric: bool) -> Result<IntScheme> {
        let scheme = IntScheme { bits, granularity, symmetric };
        if bits == Bits::Int4 && granularity == Granularity::Tensor {
            return Err(Error::BadScheme { input: scheme.to_string(), reason: INT4_TENSOR.into() });
        }
        Ok(scheme)
    }

    /// Width of the integers.
    pub const fn bits(&self) -> Bits {
        self.bits
    }

    /// Which weights share a scale.
    pub const fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Whether the zero point is fixed at 0 (no `-asym` suffix).
    pub const fn is_symmetric(&self) -> bool {
        self.symmetric
    }

    /// Columns per group: the group size, or 1 for tensor and channel scales.
    pub const fn block_size(&self) -> usize {
        match self.granularity {
            Granularity::Group(size) => size.get(),
            Granularity::Tensor | Granularity::Channel => 1,
        }
    }

    /// Scales (and zero points) per row for a row of `cols` weights: `cols / group` for groups,
    /// 1 per channel, and 0 for a tensor scale (which belongs to no row).
    pub(crate) const fn groups_per_row(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::Group(size) => cols / size.get(),
            Granularity::Channel => 1,
            Granularity::Tensor => 0,
        }
    }
}

impl From<IntScheme> for Scheme {
    fn from(scheme: IntScheme) -> Scheme {
        Scheme::Int(scheme)
    }
}

const INT4_TENSOR: &str = "int4 with one scale for the whole tensor is not supported: use int4-channel or int4-g<N>";

/// The words for the non-integer schemes, in the order the grammar lists them.
const NAMED: [(&str, Scheme); 7] = [
    ("f16", Scheme::F16),
    ("bf16", Scheme::Bf16),
    ("q8_0", Scheme::Q8_0),
    ("q4_0", Scheme::Q4_0),
    ("q4_1", Scheme::Q4_1),
    ("q5_0", Scheme::Q5_0),
    ("q5_1", Scheme::Q5_1),
];

impl Scheme {
    /// Whether the weights are stored as GGML blocks (`q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`).
    pub const fn is_ggml(&self) -> bool {
        matches!(self, Scheme::Q8_0 | Scheme::Q4_0 | Scheme::Q4_1 | Scheme::Q5_0 | Scheme::Q5_1)
    }

    /// The integer scheme, if this is one.
    pub const fn int(&self) -> Option<IntScheme> {
        match self {
            Scheme::Int(scheme) => Some(*scheme),
            _ => None,
        }
    }

    /// The number of columns a row must be a multiple of: 32 for GGML blocks, N for `-g<N>`
    /// schemes, 1 otherwise.
    pub const fn block_size(&self) -> usize {
        match self {
            Scheme::F16 | Scheme::Bf16 => 1,
            Scheme::Q8_0 | Scheme::Q4_0 | Scheme::Q4_1 | Scheme::Q5_0 | Scheme::Q5_1 => QK,
            Scheme::Int(scheme) => scheme.block_size(),
        }
    }

    /// Bytes of one GGML block of 32 weights.
    const fn ggml_block_bytes(&self) -> Option<usize> {
        match self {
            Scheme::Q8_0 => Some(size_of::<BlockQ8_0>()),
            Scheme::Q4_0 => Some(size_of::<BlockQ4_0>()),
            Scheme::Q4_1 => Some(size_of::<BlockQ4_1>()),
            Scheme::Q5_0 => Some(size_of::<BlockQ5_0>()),
            Scheme::Q5_1 => Some(size_of::<BlockQ5_1>()),
            _ => None,
        }
    }

    /// Storage cost per weight in bits, scales and zero points included: 16 for f16 and bf16,
    /// the block bytes over 32 for GGML (q8_0 = 8.5, q4_0 = 4.5, q4_1 = 5, q5_0 = 5.5,
    /// q5_1 = 6), and for `int<b>-g<N>` `b + 32/N` (f32 scales), plus `b/N` with `-asym` (zero
    /// points packed at `b` bits each).
    ///
    /// Per-channel and per-tensor scales cost a share that depends on the row length; this
    /// returns the limit for long rows, `b`. [`Scheme::bytes`] gives the exact figure.
    pub fn bits_per_weight(&self) -> f64 {
        if let Some(block_bytes) = self.ggml_block_bytes() {
            return (block_bytes * 8) as f64 / QK as f64;
        }
        match self {
            Scheme::F16 | Scheme::Bf16 => 16.0,
            Scheme::Int(scheme) => {
                let bits = f64::from(scheme.bits.bits());
                match scheme.granularity {
                    Granularity::Group(size) => {
                        let size = size.get() as f64;
                        let zero_point = if scheme.symmetric { 0.0 } else { bits / size };
                        bits + 32.0 / size + zero_point
                    }
                    Granularity::Tensor | Granularity::Channel => bits,
                }
            }
            _ => unreachable!("GGML schemes returned above"),
        }
    }

    /// Exact bytes that store a `rows x cols` weight matrix.
    ///
    /// - f16, bf16: 2 per weight.
    /// - GGML: one block per 32 weights of a row.
    /// - Integer schemes: the data of the tensors a compressed-tensors `pack-quantized`
    ///   checkpoint holds for the weight: `weight_packed` (int32 `[rows, ceil(cols * b / 32)]`),
    ///   `weight_scale` (f32: `[1]`, `[rows, 1]` or `[rows, cols / N]`), `weight_shape`
    ///   (int64 `[2]`) and, with `-asym`, `weight_zero_point` (int32 packed along dim 0,
    ///   `[ceil(rows * b / 32), groups]`, or a single int8 for a tensor scale).
    ///
    /// # Errors
    /// [`Error::BlockMisfit`] when `cols` is not a multiple of [`Scheme::block_size`], and
    /// [`Error::TooLarge`] when the count does not fit in a `u64`.
    pub fn bytes(&self, rows: usize, cols: usize) -> Result<u64> {
        let block = self.block_size();
        if !cols.is_multiple_of(block) {
            return Err(Error::BlockMisfit { scheme: self.to_string(), cols, block });
        }
        let total = || -> Option<u64> {
            let (rows, cols) = (u64::try_from(rows).ok()?, u64::try_from(cols).ok()?);
            if let Some(block_bytes) = self.ggml_block_bytes() {
                return rows.checked_mul(cols / QK as u64)?.checked_mul(block_bytes as u64);
            }
            let scheme = match self {
                Scheme::Int(scheme) => scheme,
                _ => return rows.checked_mul(cols)?.checked_mul(2),
            };
            let per_word = u64::from(32 / scheme.bits.bits());
            let packed = rows.checked_mul(cols.div_ceil(per_word))?.checked_mul(4)?;
            let shape = 16;
            let (scales, zero_points) = match scheme.granularity {
                Granularity::Tensor => (4, 1),
                Granularity::Channel | Granularity::Group(_) => {
                    let groups = scheme.groups_per_row(cols as usize) as u64;
                    (
                        rows.checked_mul(groups)?.checked_mul(4)?,
                        rows.div_ceil(per_word).checked_mul(groups)?.checked_mul(4)?,
                    )
                }
            };
            let zero_points = if scheme.symmetric { 0 } else { zero_points };
            packed.checked_add(scales)?.checked_add(shape)?.checked_add(zero_points)
        };
        total().ok_or(Error::TooLarge { rows, cols })
    }
}

impl fmt::Display for IntScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "int{}-", self.bits.bits())?;
        match self.granularity {
            Granularity::Tensor => f.write_str("tensor")?,
            Granularity::Channel => f.write_str("channel")?,
            Granularity::Group(size) => write!(f, "g{size}")?,
        }
        if !self.symmetric {
            f.write_str("-asym")?;
        }
        Ok(())
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Int(scheme) => fmt::Display::fmt(scheme, f),
            named => {
                let word = NAMED.iter().find(|(_, scheme)| scheme == named).map(|(word, _)| *word);
                f.write_str(word.expect("every non-integer scheme has a word"))
            }
        }
    }
}

impl FromStr for Scheme {
    type Err = Error;

    fn from_str(input: &str) -> Result<Scheme> {
        let bad = |reason: String| Error::BadScheme { input: input.to_string(), reason };
        let lower = input.to_ascii_lowercase();
        if let Some((_, scheme)) = NAMED.iter().find(|(word, _)| *word == lower) {
            return Ok(*scheme);
        }
        if lower.is_empty() {
            return Err(bad("empty scheme name".into()));
        }
        let Some(rest) = lower.strip_prefix("int") else {
            return Err(bad(format!("unknown scheme: expected one of {}", expected_words())));
        };
        let mut parts = rest.split('-');
        let bits = match parts.next().unwrap_or_default() {
            "8" => Bits::Int8,
            "4" => Bits::Int4,
            "" => return Err(bad("missing bit width after `int`: expected int8 or int4".into())),
            other => return Err(bad(format!("integer schemes have 8 or 4 bits, not `{other}`"))),
        };
        let granularity = match parts.next() {
            None | Some("") => {
                return Err(bad(format!("missing granularity: expected int{}-channel or int{0}-g<N>", bits.bits())));
            }
            Some("tensor") => Granularity::Tensor,
            Some("channel") => Granularity::Channel,
            Some(group) if group.starts_with('g') => Granularity::Group(parse_group(&group[1..]).map_err(bad)?),
            Some(other) => {
                return Err(bad(format!("unknown granularity `{other}`: expected tensor, channel or g<N>")));
            }
        };
        let symmetric = match parts.next() {
            None => true,
            Some("asym") => false,
            Some("sym") => return Err(bad("symmetric is the default: drop the `-sym` suffix".into())),
            Some(other) => return Err(bad(format!("unknown suffix `-{other}`: the only suffix is `-asym`"))),
        };
        if let Some(extra) = parts.next() {
            return Err(bad(format!("unexpected `-{extra}` after the scheme")));
        }
        if bits == Bits::Int4 && granularity == Granularity::Tensor {
            return Err(bad(INT4_TENSOR.into()));
        }
        Ok(Scheme::Int(IntScheme { bits, granularity, symmetric }))
    }
}

impl FromStr for IntScheme {
    type Err = Error;

    fn from_str(input: &str) -> Result<IntScheme> {
        match input.parse::<Scheme>()? {
            Scheme::Int(scheme) => Ok(scheme),
            other => Err(Error::BadScheme {
                input: input.to_string(),
                reason: format!("`{other}` is not an integer scheme (int8-... or int4-...)"),
            }),
        }
    }
}

fn parse_group(digits: &str) -> std::result::Result<NonZeroUsize, String> {
    if digits.is_empty() {
        return Err("missing group size after `g`".into());
    }
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("group size `{digits}` is not a number"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(format!("group size `{digits}` has a leading zero"));
    }
    let size: usize = digits.parse().map_err(|_| format!("group size `{digits}` is too large"))?;
    NonZeroUsize::new(size).ok_or_else(|| "group size must be at least 1".to_string())
}

fn expected_words() -> String {
    let mut words: Vec<&str> = NAMED.iter().map(|(word, _)| *word).collect();
    words.extend(["int8-tensor", "int8-channel", "int8-g<N>", "int4-channel", "int4-g<N>"]);
    words.join(", ") + " (integer schemes take an optional -asym suffix)"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> Scheme {
        input.parse().unwrap_or_else(|error| panic!("{input}: {error}"))
    }

    fn reason(input: &str) -> String {
        match input.parse::<Scheme>() {
            Err(Error::BadScheme { input: named, reason }) => {
                assert_eq!(named, input);
                reason
            }
            other => panic!("{input}: expected BadScheme, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_word_of_the_grammar() {
        let group = |size| Granularity::Group(NonZeroUsize::new(size).unwrap());
        let int = |bits, granularity, symmetric| Scheme::Int(IntScheme { bits, granularity, symmetric });
        let cases = [
            ("f16", Scheme::F16),
            ("bf16", Scheme::Bf16),
            ("q8_0", Scheme::Q8_0),
            ("q4_0", Scheme::Q4_0),
            ("q4_1", Scheme::Q4_1),
            ("q5_0", Scheme::Q5_0),
            ("q5_1", Scheme::Q5_1),
            ("int8-tensor", int(Bits::Int8, Granularity::Tensor, true)),
            ("int8-tensor-asym", int(Bits::Int8, Granularity::Tensor, false)),
            ("int8-channel", int(Bits::Int8, Granularity::Channel, true)),
            ("int8-g64", int(Bits::Int8, group(64), true)),
            ("int4-channel-asym", int(Bits::Int4, Granularity::Channel, false)),
            ("int4-g128", int(Bits::Int4, group(128), true)),
            ("int4-g128-asym", int(Bits::Int4, group(128), false)),
            ("int4-g1", int(Bits::Int4, group(1), true)),
        ];
        for (word, scheme) in cases {
            assert_eq!(parse(word), scheme, "{word}");
            assert_eq!(scheme.to_string(), word);
        }
        assert_eq!(parse("Q4_0"), Scheme::Q4_0);
        assert_eq!(parse("INT4-G32-ASYM").to_string(), "int4-g32-asym");
    }

    #[test]
    fn rejects_what_the_grammar_leaves_out_with_a_reason() {
        assert!(reason("int4-g0").contains("at least 1"));
        assert!(reason("int4-g").contains("missing group size"));
        assert!(reason("int4-gx").contains("not a number"));
        assert!(reason("int4-g+8").contains("not a number"));
        assert!(reason("int4-g-8").contains("missing group size"));
        assert!(reason("int4-g032").contains("leading zero"));
        assert!(reason("int4-g99999999999999999999999").contains("too large"));
        assert!(reason("int5-channel").contains("not `5`"));
        assert!(reason("int-channel").contains("missing bit width"));
        assert!(reason("int4-tensor").contains("not supported"));
        assert!(reason("int4-tensor-asym").contains("not supported"));
        assert!(reason("int4").contains("missing granularity"));
        assert!(reason("int8-").contains("missing granularity"));
        assert!(reason("int4-row").contains("unknown granularity"));
        assert!(reason("int4-g32-sym").contains("default"));
        assert!(reason("int4-g32-asymm").contains("unknown suffix"));
        assert!(reason("int4-g32-asym-asym").contains("unexpected"));
        assert!(reason("q6_k").contains("expected one of"));
        assert!(reason(" q4_0").contains("expected one of"));
        assert!(reason("").contains("empty"));
        let error = "fp8".parse::<Scheme>().unwrap_err().to_string();
        assert!(error.starts_with("invalid scheme `fp8`: unknown scheme"), "{error}");
    }

    #[test]
    fn int_scheme_new_rejects_int4_tensor_and_parses_alone() {
        assert!(IntScheme::new(Bits::Int4, Granularity::Tensor, true).is_err());
        let scheme = IntScheme::new(Bits::Int8, Granularity::Tensor, false).unwrap();
        assert_eq!(scheme.to_string(), "int8-tensor-asym");
        assert_eq!("int8-tensor-asym".parse::<IntScheme>().unwrap(), scheme);
        assert!(matches!("q4_0".parse::<IntScheme>(), Err(Error::BadScheme { .. })));
        assert_eq!(Scheme::from(scheme).int(), Some(scheme));
        assert_eq!(Scheme::F16.int(), None);
    }

    #[test]
    fn block_sizes_and_costs() {
        let cases = [
            ("f16", 1, 16.0, false),
            ("bf16", 1, 16.0, false),
            ("q8_0", 32, 8.5, true),
            ("q4_0", 32, 4.5, true),
            ("q4_1", 32, 5.0, true),
            ("q5_0", 32, 5.5, true),
            ("q5_1", 32, 6.0, true),
            ("int8-tensor", 1, 8.0, false),
            ("int8-channel-asym", 1, 8.0, false),
            ("int8-g64", 64, 8.5, false),
            ("int4-g128", 128, 4.25, false),
            ("int4-g32-asym", 32, 5.125, false),
        ];
        for (word, block, bits, ggml) in cases {
            let scheme = parse(word);
            assert_eq!(scheme.block_size(), block, "{word}");
            assert_eq!(scheme.bits_per_weight(), bits, "{word}");
            assert_eq!(scheme.is_ggml(), ggml, "{word}");
        }
    }

    #[test]
    fn bytes_are_exact() {
        assert_eq!(parse("f16").bytes(3, 5), Ok(30));
        assert_eq!(parse("q4_0").bytes(2, 64), Ok(2 * 2 * 18));
        assert_eq!(parse("q8_0").bytes(1, 32), Ok(34));
        // 64 x 64 int4-g32: packed 64 x 8 words, scales 64 x 2, shape 2 x i64.
        assert_eq!(parse("int4-g32").bytes(64, 64), Ok(64 * 8 * 4 + 64 * 2 * 4 + 16));
        // ... plus zero points packed along the rows: 8 x 2 words.
        assert_eq!(parse("int4-g32-asym").bytes(64, 64), Ok(64 * 8 * 4 + 64 * 2 * 4 + 16 + 8 * 2 * 4));
        // Rows and columns that do not fill a word are padded.
        assert_eq!(parse("int4-channel-asym").bytes(9, 9), Ok(9 * 2 * 4 + 9 * 4 + 16 + 2 * 4));
        assert_eq!(parse("int8-tensor").bytes(3, 5), Ok(3 * 2 * 4 + 4 + 16));
        assert_eq!(parse("int8-tensor-asym").bytes(3, 5), Ok(3 * 2 * 4 + 4 + 16 + 1));
        // For long rows the exact cost approaches bits_per_weight.
        let scheme = parse("int4-g128-asym");
        let bits = scheme.bytes(4096, 4096).unwrap() as f64 * 8.0 / (4096.0 * 4096.0);
        assert!((bits - scheme.bits_per_weight()).abs() < 1e-5, "{bits}");
    }

    #[test]
    fn bytes_reject_misfits_and_overflow() {
        assert_eq!(parse("q4_0").bytes(2, 48), Err(Error::BlockMisfit { scheme: "q4_0".into(), cols: 48, block: 32 }));
        assert!(matches!(parse("int4-g128").bytes(1, 64), Err(Error::BlockMisfit { block: 128, .. })));
        assert_eq!(
            parse("f16").bytes(usize::MAX, usize::MAX),
            Err(Error::TooLarge { rows: usize::MAX, cols: usize::MAX })
        );
        assert_eq!(parse("f16").bytes(0, 7), Ok(0));
    }

    fn any_scheme() -> impl Strategy<Value = Scheme> {
        let named = proptest::sample::select(NAMED.map(|(_, scheme)| scheme).to_vec());
        let granularity = prop_oneof![
            Just(Granularity::Tensor),
            Just(Granularity::Channel),
            (1usize..=usize::MAX).prop_map(|size| Granularity::Group(NonZeroUsize::new(size).unwrap())),
            (1usize..=4096).prop_map(|size| Granularity::Group(NonZeroUsize::new(size).unwrap())),
        ];
        let int = (prop_oneof![Just(Bits::Int4), Just(Bits::Int8)], granularity, any::<bool>())
            .prop_filter_map("int4-tensor is not a scheme", |(bits, granularity, symmetric)| {
                IntScheme::new(bits, granularity, symmetric).ok().map(Scheme::Int)
            });
        prop_oneof![named, int]
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(scheme in any_scheme()) {
            let text = scheme.to_string();
            prop_assert_eq!(text.parse::<Scheme>(), Ok(scheme));
            prop_assert_eq!(text.to_ascii_uppercase().parse::<Scheme>(), Ok(scheme));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "[a-z0-9_-]{0,24}") {
            if let Ok(scheme) = text.parse::<Scheme>() {
                prop_assert_eq!(scheme.to_string(), text);
            }
        }
    }
}
