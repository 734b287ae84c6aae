// Numbers of the x86-64 Linux ABI that capture, the loaders, the validator and restore all
// rely on: one definition each, so the checks and the code they protect cannot disagree.

/** The end of user space with 4-level page tables (the kernel's TASK_SIZE; the last page is never mapped). */
export const TASK_SIZE = 0x7ffffffff000n
/** Signals 1..64. */
export const NSIG = 64
export const NGROUPS_MAX = 65536
/** An xsave area: 512 bytes legacy area and 64 bytes header at least; below 16 KiB even with AMX. */
export const XSTATE_MIN = 576
export const XSTATE_MAX = 16384
/** ptrace's xsave layout keeps XCR0 (the enabled features) in sw_reserved, at this offset. */
export const XSAVE_FEATURES_AT = 464
export const U64_MAX = (1n << 64n) - 1n
