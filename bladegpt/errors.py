"""Every kind of error a user can cause and fix, in one leaf module: raising one never imports a big module."""


class UserError(Exception):
    """A problem with the user's input or files; the message names it and the fix, in one sentence."""


class ConfigError(UserError, ValueError):
    """A setting the user chose cannot work; the message says which and what to do."""


class DataError(UserError, ValueError):
    """Input text or a dataset folder that cannot be used; the message says what to do."""


class TokenizerError(UserError, ValueError):
    """Text or a tokenizer file the tokenizer cannot handle; the message says what to do."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, damaged or not BladeGPT's; the message says what to do."""


class SourceError(UserError):
    """An --init-from or --tokenizer-from source that cannot be used; the message says what to do."""


class DeviceError(UserError, RuntimeError):
    """A device or runtime setting this machine cannot honour; the message says what to do."""


class TrainingDiverged(UserError):
    """The loss went NaN or infinite; the message says what was kept and what to try."""
