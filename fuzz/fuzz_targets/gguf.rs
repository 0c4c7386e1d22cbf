//! Parses arbitrary bytes as GGUF; on success touches every tensor.
#![no_main]

use lathe_tensor::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    match Gguf::from_bytes("fuzz.gguf", input.to_vec()) {
        Ok(file) => {
            for view in file.iter() {
                lathe_fuzz::touch(input, view);
                assert!(file.tensor(view.name()).is_ok(), "`{}` listed but not found by name", view.name());
            }
            assert!(file.data_start().is_multiple_of(file.alignment()), "unaligned data section");
            std::hint::black_box(format!("{:?}", file.metadata()));
        }
        Err(error) => lathe_fuzz::describe(&error),
    }
});
