//! Build the CLIP `tokenizer.json` from OpenAI's BPE merges (until `unclip data build-tokenizer`
//! wraps the same function):
//!
//!     cargo run -p unclip-clip --example build_tokenizer -- bpe_simple_vocab_16e6.txt.gz OUT.json
//!
//! `bpe_simple_vocab_16e6.txt.gz` ships inside the open-clip-torch wheel (`open_clip/`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err(
            "usage: build_tokenizer <bpe_simple_vocab_16e6.txt.gz> <tokenizer.json>".into(),
        );
    };
    let json = unclip_clip::build_tokenizer_json_from_file(input)?;
    unclip_fs::write_atomic(output, json.as_bytes())?;
    eprintln!("wrote {output} ({} bytes)", json.len());
    Ok(())
}
