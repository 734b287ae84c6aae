// One error type for everything ckptfs refuses or fails at. The message is the one line a
// user sees (CLI stderr, `status`); `errno` is what the mount answers a file operation with.

export class CkptError extends Error {
  constructor(message: string, readonly errno: ErrnoName = 'EIO') {
    super(message)
    this.name = 'CkptError'
  }
}

export type ErrnoName =
  | 'EIO' | 'ENOENT' | 'EACCES' | 'EROFS' | 'EINVAL' | 'ESRCH' | 'EPERM' | 'EEXIST'
  | 'EBUSY' | 'ENOTDIR' | 'EISDIR' | 'ENOTEMPTY' | 'ENOSPC' | 'ENOTSUP' | 'ECANCELED' | 'ENOTCONN'
  | 'EDEADLK' | 'ENOTRECOVERABLE'

/** The message of any thrown value, for one-line reports. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}

/** The errno name of any thrown value: a CkptError's, a Node system error's code, or EIO. */
export function errnoOf(err: unknown): ErrnoName {
  if (err instanceof CkptError) return err.errno
  const code = (err as { code?: unknown })?.code
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? (code as ErrnoName) : 'EIO'
}

/**
 * `err` as a CkptError whose errno reads well in a shell where a write to a control file
 * (`checkpoint`, `done`) failed: a bare EIO ("Input/output error") becomes `fallback`.
 */
export function asCommandError(err: unknown, fallback: ErrnoName = 'ECANCELED'): CkptError {
  const errno = errnoOf(err)
  return new CkptError(messageOf(err), errno === 'EIO' ? fallback : errno)
}
