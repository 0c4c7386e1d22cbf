//! Element types of both file formats, with the block geometry needed to size any tensor.

use std::fmt;

/// How elements are laid out: `elements` values share one block of `bytes` bytes.
///
/// Plain types have blocks of one element; GGML quantized types pack 32 or 256 values with their
/// scales; sub-byte float types of safetensors pack a few values into whole bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Elements per block.
    pub elements: u64,
    /// Bytes per block.
    pub bytes: u64,
}

macro_rules! dtypes {
    ($( $variant:ident = $name:literal, $elements:literal, $bytes:literal, st: $st:literal, ggml: $ggml:expr; )*) => {
        /// Every element type that a safetensors or GGUF file can declare.
        ///
        /// lathe can list any of them; which ones it can decode is up to the kernels
        /// (`to_f32` here covers F32, F16 and BF16).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types, missing_docs)]
        #[non_exhaustive]
        pub enum Dtype {
            $( $variant, )*
        }

        impl Dtype {
            /// Every dtype, in declaration order.
            pub const ALL: &'static [Dtype] = &[$( Dtype::$variant, )*];

            /// The upper-case name the formats use (`F32`, `Q4_1`, `F8_E4M3`).
            pub fn name(self) -> &'static str {
                match self { $( Dtype::$variant => $name, )* }
            }

            /// Elements per block and bytes per block.
            pub fn layout(self) -> BlockLayout {
                match self { $( Dtype::$variant => BlockLayout { elements: $elements, bytes: $bytes }, )* }
            }

            /// Whether safetensors can declare this dtype.
            pub fn is_safetensors(self) -> bool {
                match self { $( Dtype::$variant => $st, )* }
            }

            /// The GGML type id (`enum ggml_type`), if GGUF can hold this dtype.
            pub fn ggml_id(self) -> Option<u32> {
                match self { $( Dtype::$variant => $ggml, )* }
            }
        }
    };
}

// Block geometry from ggml's type traits (ggml.c) and the safetensors specification. Q8_1 is
// 36 bytes in ggml (f16 d, f16 s, 32 int8); older gguf-py tables still say 40 from its f32 era.
dtypes! {
    BOOL = "BOOL", 1, 1, st: true, ggml: None;
    U8 = "U8", 1, 1, st: true, ggml: None;
    I8 = "I8", 1, 1, st: true, ggml: Some(24);
    U16 = "U16", 1, 2, st: true, ggml: None;
    I16 = "I16", 1, 2, st: true, ggml: Some(25);
    U32 = "U32", 1, 4, st: true, ggml: None;
    I32 = "I32", 1, 4, st: true, ggml: Some(26);
    U64 = "U64", 1, 8, st: true, ggml: None;
    I64 = "I64", 1, 8, st: true, ggml: Some(27);
    F16 = "F16", 1, 2, st: true, ggml: Some(1);
    BF16 = "BF16", 1, 2, st: true, ggml: Some(30);
    F32 = "F32", 1, 4, st: true, ggml: Some(0);
    F64 = "F64", 1, 8, st: true, ggml: Some(28);
    C64 = "C64", 1, 8, st: true, ggml: None;
    F8_E5M2 = "F8_E5M2", 1, 1, st: true, ggml: None;
    F8_E4M3 = "F8_E4M3", 1, 1, st: true, ggml: None;
    F8_E8M0 = "F8_E8M0", 1, 1, st: true, ggml: None;
    F8_E4M3FNUZ = "F8_E4M3FNUZ", 1, 1, st: true, ggml: None;
    F8_E5M2FNUZ = "F8_E5M2FNUZ", 1, 1, st: true, ggml: None;
    F6_E2M3 = "F6_E2M3", 4, 3, st: true, ggml: None;
    F6_E3M2 = "F6_E3M2", 4, 3, st: true, ggml: None;
    F4 = "F4", 2, 1, st: true, ggml: None;
    Q4_0 = "Q4_0", 32, 18, st: false, ggml: Some(2);
    Q4_1 = "Q4_1", 32, 20, st: false, ggml: Some(3);
    Q5_0 = "Q5_0", 32, 22, st: false, ggml: Some(6);
    Q5_1 = "Q5_1", 32, 24, st: false, ggml: Some(7);
    Q8_0 = "Q8_0", 32, 34, st: false, ggml: Some(8);
    Q8_1 = "Q8_1", 32, 36, st: false, ggml: Some(9);
    Q2_K = "Q2_K", 256, 84, st: false, ggml: Some(10);
    Q3_K = "Q3_K", 256, 110, st: false, ggml: Some(11);
    Q4_K = "Q4_K", 256, 144, st: false, ggml: Some(12);
    Q5_K = "Q5_K", 256, 176, st: false, ggml: Some(13);
    Q6_K = "Q6_K", 256, 210, st: false, ggml: Some(14);
    Q8_K = "Q8_K", 256, 292, st: false, ggml: Some(15);
    IQ2_XXS = "IQ2_XXS", 256, 66, st: false, ggml: Some(16);
    IQ2_XS = "IQ2_XS", 256, 74, st: false, ggml: Some(17);
    IQ3_XXS = "IQ3_XXS", 256, 98, st: false, ggml: Some(18);
    IQ1_S = "IQ1_S", 256, 50, st: false, ggml: Some(19);
    IQ4_NL = "IQ4_NL", 32, 18, st: false, ggml: Some(20);
    IQ3_S = "IQ3_S", 256, 110, st: false, ggml: Some(21);
    IQ2_S = "IQ2_S", 256, 82, st: false, ggml: Some(22);
    IQ4_XS = "IQ4_XS", 256, 136, st: false, ggml: Some(23);
    IQ1_M = "IQ1_M", 256, 56, st: false, ggml: Some(29);
    TQ1_0 = "TQ1_0", 256, 54, st: false, ggml: Some(34);
    TQ2_0 = "TQ2_0", 256, 66, st: false, ggml: Some(35);
    MXFP4 = "MXFP4", 32, 17, st: false, ggml: Some(39);
    NVFP4 = "NVFP4", 64, 36, st: false, ggml: Some(40);
    Q1_0 = "Q1_0", 128, 18, st: false, ggml: Some(41);
}

impl Dtype {
    /// The dtype a safetensors header names, if known.
    pub fn from_safetensors_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.iter().copied().find(|dtype| dtype.is_safetensors() && dtype.name() == name)
    }

    /// The dtype of a GGML type id, if known.
    pub fn from_ggml_id(id: u32) -> Option<Dtype> {
        Dtype::ALL.iter().copied().find(|dtype| dtype.ggml_id() == Some(id))
    }

    /// Whether values are stored in blocks of more than one element.
    pub fn is_blocked(self) -> bool {
        self.layout().elements > 1
    }

    /// Bytes taken by `n_elements` values, or `None` when `n_elements` is not a whole number of
    /// blocks or the size overflows `u64`.
    pub fn byte_len(self, n_elements: u64) -> Option<u64> {
        let layout = self.layout();
        if !n_elements.is_multiple_of(layout.elements) {
            return None;
        }
        (n_elements / layout.elements).checked_mul(layout.bytes)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip() {
        for &dtype in Dtype::ALL {
            if dtype.is_safetensors() {
                assert_eq!(Dtype::from_safetensors_name(dtype.name()), Some(dtype));
            }
            if let Some(id) = dtype.ggml_id() {
                assert_eq!(Dtype::from_ggml_id(id), Some(dtype));
            }
            assert!(dtype.is_safetensors() || dtype.ggml_id().is_some(), "{dtype} belongs to no format");
        }
        // Ids retired from ggml (Q4_2, Q4_3, the repacked Q4_0_x_y and IQ4_NL_x_y) stay unknown.
        for retired in [4, 5, 31, 32, 33, 36, 37, 38] {
            assert_eq!(Dtype::from_ggml_id(retired), None);
        }
        assert_eq!(Dtype::from_safetensors_name("Q4_0"), None);
    }

    #[test]
    fn byte_len_checks_blocks_and_overflow() {
        assert_eq!(Dtype::Q4_0.byte_len(64), Some(36));
        assert_eq!(Dtype::Q4_0.byte_len(33), None);
        assert_eq!(Dtype::Q6_K.byte_len(256 * 3), Some(630));
        assert_eq!(Dtype::F32.byte_len(u64::MAX), None);
        assert_eq!(Dtype::F4.byte_len(5), None);
        assert_eq!(Dtype::F6_E2M3.byte_len(8), Some(6));
    }
}
