"""Custom socket types. Every URSA-internal object gets an URSA_ prefix so it never plugs into a core socket."""
from comfy_api.latest import io

URSAModel = io.Custom("URSA_MODEL")
URSAVQ = io.Custom("URSA_VQ")
URSACond = io.Custom("URSA_COND")
URSATokens = io.Custom("URSA_TOKENS")
URSASchedule = io.Custom("URSA_SCHEDULE")
