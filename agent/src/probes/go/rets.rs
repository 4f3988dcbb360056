//! The return instructions of a function, where the probes read what a Go
//! function returns: a uretprobe replaces the return address on the stack,
//! which the Go runtime copies elsewhere when a goroutine's stack grows
//! (and then crashes on), so Go functions are probed at each `RET`
//! instead. Found by decoding the function's x86-64 code from its entry to
//! the next function's (Go puts no data in its text).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};

/// Addresses of the `RET`s in `code`, which starts at address `address`.
pub fn ret_addresses(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut rets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.mnemonic() == Mnemonic::Ret {
            rets.push(instruction.ip());
        }
    }
    rets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rets_not_ret_bytes() {
        let code = [
            0x48, 0xc7, 0xc0, 0xc3, 0x00, 0x00, 0x00, // mov rax, 0xc3
            0xc3, // ret
            0x0f, 0x1f, 0x00, // nop [rax]
            0xc2, 0x08, 0x00, // ret 8
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(ret_addresses(&code, 0x1000), [0x1007, 0x100b]);
    }
}
