//! Storage formats for linear weights, and what a model weighs in each.
//!
//! lathe-config cannot name lathe-quant's `Scheme` (it is a leaf), so it keeps its own cost model
//! over the same grammar: any scheme string lathe-quant parses, [`WeightFormat`] parses to the
//! same bytes. The grammar is lathe-quant's plus `f32` and two sparse formats (ASCII case is
//! ignored; [`Display`](fmt::Display) writes lower case):
//!
//! ```text
//! format      = "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | int-format
//!             | "2:4" | "csr-u16-d" DENSITY | "csr-u32-d" DENSITY
//! int-format  = ( "int8-tensor" | "int8-channel" | "int8-g" N | "int4-channel" | "int4-g" N ) [ "-asym" ]
//! N           = decimal integer >= 1, no sign, no leading zero
//! DENSITY     = decimal number in 0..=1 (the fraction of weights kept)
//! ```

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use crate::arch::{TensorKind, numel};
use crate::{Architecture, Dtype, Error, Result};

/// A GGML block format: 32 weights per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32 int8 and an f16 scale: 34 bytes.
    Q8_0,
    /// 32 4-bit values and an f16 scale: 18 bytes.
    Q4_0,
    /// 32 4-bit values, an f16 scale and an f16 minimum: 20 bytes.
    Q4_1,
    /// 32 5-bit values and an f16 scale: 22 bytes.
    Q5_0,
    /// 32 5-bit values, an f16 scale and an f16 minimum: 24 bytes.
    Q5_1,
}

/// Weights per GGML block.
pub const GGML_BLOCK: usize = 32;

impl GgmlType {
    /// Bytes of one block of [`GGML_BLOCK`] weights.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
        }
    }
}

/// Width of the integers of an [`IntFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntBits {
    /// 4 bits, packed eight to an int32 (two per byte).
    Int4,
    /// 8 bits, packed four to an int32.
    Int8,
}

impl IntBits {
    /// 4 or 8.
    pub fn bits(self) -> u64 {
        match self {
            IntBits::Int4 => 4,
            IntBits::Int8 => 8,
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
    /// One scale per run of this many weights within a row.
    Group(NonZeroUsize),
}

/// Integer weights as a compressed-tensors `pack-quantized` checkpoint stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntFormat {
    /// Integer width.
    pub bits: IntBits,
    /// Scale granularity.
    pub granularity: Granularity,
    /// Zero point fixed at 0 (no `-asym`): no zero points stored.
    pub symmetric: bool,
}

/// Index width of a CSR matrix's column indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexWidth {
    /// u16: rows of at most 65536 columns.
    U16,
    /// u32.
    U32,
}

/// How a linear's weight matrix is stored, for counting its bytes.
///
/// ```
/// use lathe_config::WeightFormat;
/// let format: WeightFormat = "int4-g128-asym".parse()?;
/// assert_eq!(format.to_string(), "int4-g128-asym");
/// // A 4096 x 4096 matrix: packed int4, f32 scales and packed zero points per group of 128.
/// assert_eq!(format.bytes(4096, 4096)?, 4096 * 4096 / 2 + 4096 * 32 * 4 + 16 + 4096 / 8 * 32 * 4);
/// assert_eq!("q4_0".parse::<WeightFormat>()?.bytes(2, 64)?, 2 * 2 * 18);
/// # Ok::<(), lathe_config::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightFormat {
    /// Plain floats.
    Dense(Dtype),
    /// GGML blocks along each row.
    Ggml(GgmlType),
    /// compressed-tensors integers.
    Int(IntFormat),
    /// CSR with f32 values, column indices of the given width and u32 row offsets, keeping
    /// `density` of the weights (rounded half to even).
    Csr {
        /// Fraction of the weights kept, in `0..=1`.
        density: f64,
        /// Column index width.
        index: IndexWidth,
    },
    /// 2:4 semi-structured sparsity: half the weights as f32 and a 2-bit index for each.
    TwoFour,
}

impl WeightFormat {
    /// The number of weights a row must be a multiple of: 32 for GGML, N for `-g<N>`, 4 for
    /// 2:4, 1 otherwise.
    pub fn block_size(&self) -> usize {
        match self {
            WeightFormat::Ggml(_) => GGML_BLOCK,
            WeightFormat::Int(IntFormat { granularity: Granularity::Group(size), .. }) => size.get(),
            WeightFormat::TwoFour => 4,
            _ => 1,
        }
    }

    /// Nominal bits per weight: 32 or 16 for floats, block bytes x 8 / 32 for GGML, for
    /// integers `b` plus `32 / N` (f32 scales) and `b / N` (`-asym` zero points) per group of N
    /// (the long-row limit `b` for channel and tensor scales), `density x (32 + index bits)` for
    /// CSR (row offsets left out), 17 for 2:4. [`WeightFormat::bytes`] is exact.
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            WeightFormat::Dense(dtype) => (dtype.bytes() * 8) as f64,
            WeightFormat::Ggml(ggml) => (ggml.block_bytes() * 8) as f64 / GGML_BLOCK as f64,
            WeightFormat::Int(int) => {
                let bits = int.bits.bits() as f64;
                match int.granularity {
                    Granularity::Group(size) => {
                        let size = size.get() as f64;
                        bits + 32.0 / size + if int.symmetric { 0.0 } else { bits / size }
                    }
                    Granularity::Tensor | Granularity::Channel => bits,
                }
            }
            WeightFormat::Csr { density, index } => {
                let index_bits = match index {
                    IndexWidth::U16 => 16.0,
                    IndexWidth::U32 => 32.0,
                };
                density * (32.0 + index_bits)
            }
            WeightFormat::TwoFour => 17.0,
        }
    }

    /// Exact bytes that store a weight matrix of `rows` outputs by `cols` inputs (its logical
    /// `[out, in]` shape, whatever the layout it is stored in):
    ///
    /// - floats: the dtype's bytes per weight.
    /// - GGML: one block per 32 weights of a row.
    /// - integers, as compressed-tensors `pack-quantized` stores them: `weight_packed` (int32
    ///   `[rows, ceil(cols * b / 32)]`), `weight_scale` (f32 `[1]`, `[rows, 1]` or
    ///   `[rows, cols / N]`), `weight_shape` (int64 `[2]`) and with `-asym` `weight_zero_point`
    ///   (int32 packed along the rows, `[ceil(rows * b / 32), groups]`, or one int8 for a tensor
    ///   scale). This is lathe-quant's count.
    /// - CSR: `nnz` f32 values and indices, `rows + 1` u32 offsets, where `nnz` is
    ///   `density x rows x cols` rounded half to even.
    /// - 2:4: `rows x cols / 2` f32 values and as many 2-bit indices, rounded up to a byte.
    ///
    /// # Errors
    /// [`Error::BlockMisfit`] when `cols` is not a multiple of [`WeightFormat::block_size`],
    /// [`Error::Unsupported`] for a density outside `0..=1` or u16 indices over rows longer than
    /// 65536, [`Error::MatrixTooLarge`] when the count overflows 64 bits.
    pub fn bytes(&self, rows: usize, cols: usize) -> Result<u64> {
        let block = self.block_size();
        if !cols.is_multiple_of(block) {
            return Err(Error::BlockMisfit { format: self.to_string(), cols, block });
        }
        let unsupported = |reason: String| Error::Unsupported { format: self.to_string(), rows, cols, reason };
        if let WeightFormat::Csr { density, index } = *self {
            if !(0.0..=1.0).contains(&density) {
                return Err(unsupported(format!("density {density} is not in 0..=1")));
            }
            if index == IndexWidth::U16 && cols > 1 << 16 {
                return Err(unsupported("u16 column indices address at most 65536 columns".into()));
            }
        }
        self.checked_bytes(rows as u64, cols as u64).ok_or(Error::MatrixTooLarge { rows, cols })
    }

    fn checked_bytes(&self, rows: u64, cols: u64) -> Option<u64> {
        let weights = rows.checked_mul(cols)?;
        match *self {
            WeightFormat::Dense(dtype) => weights.checked_mul(dtype.bytes()),
            WeightFormat::Ggml(ggml) => rows.checked_mul(cols / GGML_BLOCK as u64)?.checked_mul(ggml.block_bytes()),
            WeightFormat::Int(int) => {
                let per_word = 32 / int.bits.bits();
                let packed = rows.checked_mul(cols.div_ceil(per_word))?.checked_mul(4)?;
                let shape = 16;
                let groups = match int.granularity {
                    Granularity::Tensor => None,
                    Granularity::Channel => Some(1),
                    Granularity::Group(size) => Some(cols / size.get() as u64),
                };
                let (scales, zero_points) = match groups {
                    None => (4, 1),
                    Some(groups) => (
                        rows.checked_mul(groups)?.checked_mul(4)?,
                        rows.div_ceil(per_word).checked_mul(groups)?.checked_mul(4)?,
                    ),
                };
                let zero_points = if int.symmetric { 0 } else { zero_points };
                packed.checked_add(scales)?.checked_add(shape)?.checked_add(zero_points)
            }
            WeightFormat::Csr { density, index } => {
                let nnz = (density * weights as f64).round_ties_even() as u64;
                let index_bytes = match index {
                    IndexWidth::U16 => 2,
                    IndexWidth::U32 => 4,
                };
                let offsets = rows.checked_add(1)?.checked_mul(4)?;
                nnz.checked_mul(4 + index_bytes)?.checked_add(offsets)
            }
            WeightFormat::TwoFour => {
                let kept = weights / 2;
                kept.checked_mul(4)?.checked_add((kept * 2).div_ceil(8))
            }
        }
    }
}

const NAMED: [(&str, WeightFormat); 9] = [
    ("f32", WeightFormat::Dense(Dtype::F32)),
    ("f16", WeightFormat::Dense(Dtype::F16)),
    ("bf16", WeightFormat::Dense(Dtype::Bf16)),
    ("q8_0", WeightFormat::Ggml(GgmlType::Q8_0)),
    ("q4_0", WeightFormat::Ggml(GgmlType::Q4_0)),
    ("q4_1", WeightFormat::Ggml(GgmlType::Q4_1)),
    ("q5_0", WeightFormat::Ggml(GgmlType::Q5_0)),
    ("q5_1", WeightFormat::Ggml(GgmlType::Q5_1)),
    ("2:4", WeightFormat::TwoFour),
];

const INT4_TENSOR: &str = "int4 with one scale for the whole tensor is not supported: use int4-channel or int4-g<N>";

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::Int(int) => {
                write!(f, "int{}-", int.bits.bits())?;
                match int.granularity {
                    Granularity::Tensor => f.write_str("tensor")?,
                    Granularity::Channel => f.write_str("channel")?,
                    Granularity::Group(size) => write!(f, "g{size}")?,
                }
                if !int.symmetric {
                    f.write_str("-asym")?;
                }
                Ok(())
            }
            WeightFormat::Csr { density, index } => {
                let width = if *index == IndexWidth::U16 { 16 } else { 32 };
                write!(f, "csr-u{width}-d{density}")
            }
            named => {
                let word = NAMED.iter().find(|(_, format)| format == named).map_or("?", |(word, _)| *word);
                f.write_str(word)
            }
        }
    }
}

impl FromStr for WeightFormat {
    type Err = Error;

    fn from_str(input: &str) -> Result<WeightFormat> {
        let bad = |reason: String| Error::BadFormat { input: input.to_string(), reason };
        let lower = input.to_ascii_lowercase();
        if let Some((_, format)) = NAMED.iter().find(|(word, _)| *word == lower) {
            return Ok(*format);
        }
        if lower.is_empty() {
            return Err(bad("empty format name".into()));
        }
        if let Some(rest) = lower.strip_prefix("csr-") {
            let (index, density) = match rest.split_once("-d") {
                Some(("u16", density)) => (IndexWidth::U16, density),
                Some(("u32", density)) => (IndexWidth::U32, density),
                _ => return Err(bad("expected csr-u16-d<density> or csr-u32-d<density>".into())),
            };
            let valid = density.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.');
            return match density.parse::<f64>() {
                Ok(density) if valid && (0.0..=1.0).contains(&density) => Ok(WeightFormat::Csr { density, index }),
                _ => Err(bad(format!("density `{density}` is not a number in 0..=1"))),
            };
        }
        let Some(rest) = lower.strip_prefix("int") else {
            return Err(bad(format!("unknown format: expected one of {}", expected_words())));
        };
        let mut parts = rest.split('-');
        let bits = match parts.next().unwrap_or_default() {
            "8" => IntBits::Int8,
            "4" => IntBits::Int4,
            "" => return Err(bad("missing bit width after `int`: expected int8 or int4".into())),
            other => return Err(bad(format!("integer formats have 8 or 4 bits, not `{other}`"))),
        };
        let granularity = match parts.next() {
            None | Some("") => {
                return Err(bad(format!("missing granularity: expected int{}-channel or int{0}-g<N>", bits.bits())));
            }
            Some("tensor") => Granularity::Tensor,
            Some("channel") => Granularity::Channel,
            Some(group) if group.starts_with('g') => Granularity::Group(parse_group(&group[1..]).map_err(bad)?),
            Some(other) => return Err(bad(format!("unknown granularity `{other}`: expected tensor, channel or g<N>"))),
        };
        let symmetric = match parts.next() {
            None => true,
            Some("asym") => false,
            Some("sym") => return Err(bad("symmetric is the default: drop the `-sym` suffix".into())),
            Some(other) => return Err(bad(format!("unknown suffix `-{other}`: the only suffix is `-asym`"))),
        };
        if let Some(extra) = parts.next() {
            return Err(bad(format!("unexpected `-{extra}` after the format")));
        }
        if bits == IntBits::Int4 && granularity == Granularity::Tensor {
            return Err(bad(INT4_TENSOR.into()));
        }
        Ok(WeightFormat::Int(IntFormat { bits, granularity, symmetric }))
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
    words.extend(["int8-tensor", "int8-channel", "int8-g<N>", "int4-channel", "int4-g<N>", "csr-u16-d<density>"]);
    words.push("csr-u32-d<density>");
    words.join(", ") + " (integer formats take an optional -asym suffix)"
}

/// What a model's weights take in a storage format: the layers' linear weights in the format,
/// everything else (embeddings, norms, biases, pooler, LM head) at the config's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Bytes of the layers' linear weights in the format.
    pub linear_weights: u64,
    /// Bytes of every other described tensor at the stored dtype (a tied LM head once).
    pub other: u64,
}

impl Memory {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.linear_weights.saturating_add(self.other)
    }
}

impl Architecture {
    /// The bytes of the described weights if every layer's linear weight is stored in `format`
    /// and every other tensor at the config's dtype ([`Memory`]).
    ///
    /// # Errors
    /// The format's error for a weight it cannot store, wrapped in [`Error::InTensor`] naming
    /// the weight; [`Error::TooLarge`] when the total overflows 64 bits.
    pub fn memory(&self, format: &WeightFormat) -> Result<Memory> {
        let too_large = || Error::TooLarge { file: self.config().path().to_path_buf() };
        let dtype_bytes = self.config().dtype().bytes();
        let (mut linear_weights, mut other) = (0u64, 0u64);
        for layer in self.layers() {
            for linear in &layer.linears {
                let bytes = format
                    .bytes(linear.out_features, linear.in_features)
                    .map_err(|error| error.in_tensor(&linear.weight))?;
                linear_weights = linear_weights.checked_add(bytes).ok_or_else(too_large)?;
            }
        }
        for tensor in self.tensors() {
            if !matches!(tensor.kind, TensorKind::Weight(_)) {
                let bytes = numel(&tensor.shape).checked_mul(dtype_bytes).ok_or_else(too_large)?;
                other = other.checked_add(bytes).ok_or_else(too_large)?;
            }
        }
        Ok(Memory { linear_weights, other })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> WeightFormat {
        input.parse().unwrap_or_else(|error| panic!("{input}: {error}"))
    }

    fn reason(input: &str) -> String {
        match input.parse::<WeightFormat>() {
            Err(Error::BadFormat { input: named, reason }) => {
                assert_eq!(named, input);
                reason
            }
            other => panic!("{input}: expected BadFormat, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_word_and_writes_it_back() {
        let group = |size| Granularity::Group(NonZeroUsize::new(size).unwrap());
        let int = |bits, granularity, symmetric| WeightFormat::Int(IntFormat { bits, granularity, symmetric });
        let cases = [
            ("f32", WeightFormat::Dense(Dtype::F32)),
            ("bf16", WeightFormat::Dense(Dtype::Bf16)),
            ("q5_1", WeightFormat::Ggml(GgmlType::Q5_1)),
            ("int8-tensor-asym", int(IntBits::Int8, Granularity::Tensor, false)),
            ("int8-channel", int(IntBits::Int8, Granularity::Channel, true)),
            ("int8-g64", int(IntBits::Int8, group(64), true)),
            ("int4-channel-asym", int(IntBits::Int4, Granularity::Channel, false)),
            ("int4-g128-asym", int(IntBits::Int4, group(128), false)),
            ("2:4", WeightFormat::TwoFour),
            ("csr-u16-d0.5", WeightFormat::Csr { density: 0.5, index: IndexWidth::U16 }),
            ("csr-u32-d1", WeightFormat::Csr { density: 1.0, index: IndexWidth::U32 }),
        ];
        for (word, format) in cases {
            assert_eq!(parse(word), format, "{word}");
            assert_eq!(format.to_string(), word);
        }
        assert_eq!(parse("INT4-G32-ASYM").to_string(), "int4-g32-asym");
        assert_eq!(parse("Q4_0"), WeightFormat::Ggml(GgmlType::Q4_0));
    }

    #[test]
    fn rejects_what_the_grammar_leaves_out() {
        assert!(reason("int4-g0").contains("at least 1"));
        assert!(reason("int4-g").contains("missing group size"));
        assert!(reason("int4-g032").contains("leading zero"));
        assert!(reason("int4-g99999999999999999999999").contains("too large"));
        assert!(reason("int4-tensor").contains("not supported"));
        assert!(reason("int5-channel").contains("not `5`"));
        assert!(reason("int4").contains("missing granularity"));
        assert!(reason("int4-row").contains("unknown granularity"));
        assert!(reason("int4-g32-sym").contains("default"));
        assert!(reason("int4-g32-asym-x").contains("unexpected"));
        assert!(reason("csr-u8-d0.5").contains("csr-u16-d<density>"));
        assert!(reason("csr-u16-d1.5").contains("not a number in 0..=1"));
        assert!(reason("csr-u16-dnan").contains("not a number"));
        assert!(reason("csr-u16-d-0").contains("not a number"));
        assert!(reason("").contains("empty"));
        assert_eq!(
            "fp8".parse::<WeightFormat>().unwrap_err().to_string(),
            format!("invalid storage format `fp8`: unknown format: expected one of {}", expected_words())
        );
    }

    /// The figures lathe-quant's `Scheme::bytes` tests state, which this count must reproduce.
    #[test]
    fn bytes_match_lathe_quant() {
        assert_eq!(parse("f16").bytes(3, 5).unwrap(), 30);
        assert_eq!(parse("q4_0").bytes(2, 64).unwrap(), 2 * 2 * 18);
        assert_eq!(parse("q8_0").bytes(1, 32).unwrap(), 34);
        assert_eq!(parse("int4-g32").bytes(64, 64).unwrap(), 64 * 8 * 4 + 64 * 2 * 4 + 16);
        assert_eq!(parse("int4-g32-asym").bytes(64, 64).unwrap(), 64 * 8 * 4 + 64 * 2 * 4 + 16 + 8 * 2 * 4);
        assert_eq!(parse("int4-channel-asym").bytes(9, 9).unwrap(), 9 * 2 * 4 + 9 * 4 + 16 + 2 * 4);
        assert_eq!(parse("int8-tensor").bytes(3, 5).unwrap(), 3 * 2 * 4 + 4 + 16);
        assert_eq!(parse("int8-tensor-asym").bytes(3, 5).unwrap(), 3 * 2 * 4 + 4 + 16 + 1);
        let format = parse("int4-g128-asym");
        let bits = format.bytes(4096, 4096).unwrap() as f64 * 8.0 / (4096.0 * 4096.0);
        assert!((bits - format.bits_per_weight()).abs() < 1e-5, "{bits}");
    }

    #[test]
    fn ggml_block_costs() {
        for (word, bits) in [("q8_0", 8.5), ("q4_0", 4.5), ("q4_1", 5.0), ("q5_0", 5.5), ("q5_1", 6.0)] {
            let format = parse(word);
            assert_eq!(format.bits_per_weight(), bits, "{word}");
            assert_eq!(format.bytes(3, 64).unwrap() as f64, bits * 3.0 * 64.0 / 8.0, "{word}");
        }
        assert_eq!(parse("int8-g64").bits_per_weight(), 8.5);
        assert_eq!(parse("int4-g32-asym").bits_per_weight(), 5.125);
        assert_eq!(parse("f32").bits_per_weight(), 32.0);
    }

    #[test]
    fn sparse_costs() {
        // 10 x 10 at density 0.25: 25 values, 25 u16 indices, 11 u32 offsets.
        assert_eq!(parse("csr-u16-d0.25").bytes(10, 10).unwrap(), 25 * 4 + 25 * 2 + 11 * 4);
        assert_eq!(parse("csr-u32-d0.25").bytes(10, 10).unwrap(), 25 * 8 + 11 * 4);
        // 2.5 values round half to even.
        assert_eq!(parse("csr-u32-d0.25").bytes(2, 5).unwrap(), 2 * 8 + 3 * 4);
        assert_eq!(parse("csr-u32-d0").bytes(2, 5).unwrap(), 3 * 4);
        // 2:4 over 3 x 8: 12 f32 values and 12 two-bit indices (3 bytes).
        assert_eq!(parse("2:4").bytes(3, 8).unwrap(), 12 * 4 + 3);
        assert_eq!(parse("2:4").bits_per_weight(), 17.0);
        assert_eq!(parse("csr-u16-d0.5").bits_per_weight(), 24.0);
    }

    #[test]
    fn bytes_reject_misfits_bad_densities_and_overflow() {
        let error = parse("q4_0").bytes(2, 48).unwrap_err();
        assert_eq!(error.to_string(), "format q4_0 cannot store rows of 48 weights: rows must hold whole blocks of 32");
        assert!(matches!(parse("int4-g128").bytes(1, 64), Err(Error::BlockMisfit { block: 128, .. })));
        assert!(matches!(parse("2:4").bytes(1, 6), Err(Error::BlockMisfit { block: 4, .. })));
        let error = WeightFormat::Csr { density: 2.0, index: IndexWidth::U32 }.bytes(1, 1).unwrap_err();
        assert_eq!(error.to_string(), "format csr-u32-d2 cannot store a 1 x 1 matrix: density 2 is not in 0..=1");
        assert!(parse("csr-u16-d0.5").bytes(1, 65537).unwrap_err().to_string().contains("65536"));
        assert!(parse("csr-u16-d0.5").bytes(1, 65536).is_ok());
        assert!(matches!(parse("f32").bytes(usize::MAX, usize::MAX), Err(Error::MatrixTooLarge { .. })));
        assert_eq!(parse("f16").bytes(0, 7).unwrap(), 0);
    }

    fn any_format() -> impl Strategy<Value = WeightFormat> {
        let named = proptest::sample::select(NAMED.map(|(_, format)| format).to_vec());
        let granularity = prop_oneof![
            Just(Granularity::Tensor),
            Just(Granularity::Channel),
            (1usize..=usize::MAX).prop_map(|size| Granularity::Group(NonZeroUsize::new(size).unwrap())),
        ];
        let int = (prop_oneof![Just(IntBits::Int4), Just(IntBits::Int8)], granularity, any::<bool>())
            .prop_filter("int4-tensor is not a format", |(bits, granularity, _)| {
                !(*bits == IntBits::Int4 && *granularity == Granularity::Tensor)
            })
            .prop_map(|(bits, granularity, symmetric)| WeightFormat::Int(IntFormat { bits, granularity, symmetric }));
        let index = prop_oneof![Just(IndexWidth::U16), Just(IndexWidth::U32)];
        let csr = (0.0f64..=1.0, index).prop_map(|(density, index)| WeightFormat::Csr { density, index });
        prop_oneof![named, int, csr]
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(format in any_format()) {
            let text = format.to_string();
            prop_assert_eq!(text.parse::<WeightFormat>().ok(), Some(format));
            prop_assert_eq!(text.to_ascii_uppercase().parse::<WeightFormat>().ok(), Some(format));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "[a-z0-9_:.-]{0,24}") {
            if let Ok(format) = text.parse::<WeightFormat>() {
                prop_assert_eq!(format.to_string().parse::<WeightFormat>().ok(), Some(format));
            }
        }

        #[test]
        fn bytes_grow_with_rows(format in any_format(), rows in 0usize..64, blocks in 0usize..8) {
            let cols = blocks * format.block_size().min(256);
            if let (Ok(small), Ok(large)) = (format.bytes(rows, cols), format.bytes(rows + 1, cols)) {
                prop_assert!(small <= large);
            }
        }
    }
}
