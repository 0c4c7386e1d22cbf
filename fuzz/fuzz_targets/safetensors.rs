//! Parses arbitrary bytes as safetensors; on success touches every tensor.
#![no_main]

use lathe_tensor::SafeTensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    match SafeTensors::from_bytes("fuzz.safetensors", input.to_vec()) {
        Ok(file) => {
            for view in file.iter() {
                lathe_fuzz::touch(input, view);
                assert!(file.tensor(view.name()).is_ok(), "`{}` listed but not found by name", view.name());
            }
            std::hint::black_box(file.metadata());
        }
        Err(error) => lathe_fuzz::describe(&error),
    }
});
