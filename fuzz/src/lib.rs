//! Checks shared by the fuzz targets: what must hold for every tensor of a file that parsed.
#![forbid(unsafe_code)]

use lathe_tensor::{Dtype, Error, TensorView};

/// Reads every byte of `view`, checks that its bytes are the declared range of `input` and sized
/// for its dtype and shape, and converts F32, F16 and BF16 data to f32.
///
/// # Panics
/// When any of those fails: that is a parser bug for the fuzzer to report.
pub fn touch(input: &[u8], view: TensorView<'_>) {
    let info = view.info();
    let end = info.offset.checked_add(info.len).expect("tensor end fits in u64");
    let declared = input.get(info.offset as usize..end as usize).expect("tensor range inside the input");
    assert_eq!(view.bytes(), declared, "view of `{}` is not its declared range", info.name);
    assert_eq!(info.dtype.byte_len(view.num_elements()), Some(info.len), "size of `{}`", info.name);
    let checksum = view.bytes().iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte));
    std::hint::black_box(checksum);
    if matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        let values = view.to_f32().expect("float tensors convert");
        assert_eq!(values.len() as u64, view.num_elements());
        std::hint::black_box(values);
    }
}

/// Formats an error both ways, so a panic in a `Display` or `Debug` impl is found too.
pub fn describe(error: &Error) {
    std::hint::black_box((error.to_string(), format!("{error:?}")));
}
