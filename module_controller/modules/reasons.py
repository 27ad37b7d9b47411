"""The reasons module pods and their Events show, in one place (kubectl describe shows them)."""

from __future__ import annotations

ACTIVATED = "ModulesActivated"
NOT_ACTIVATED = "ModulesNotActivated"
INSTALLING = "ModuleInstalling"
UNINSTALLING = "ModuleUninstalling"
# Another pod's jar, or another version, must leave the base before this pod's module comes.
REPLACING = "ModuleReplacing"
SUPERSEDED = "SupersededByNewerVersion"
# A version left DEACTIVATED (another was switched on over it) is installed again.
REINSTALLING = "ModuleReinstalling"
REPLACED = "ModuleReplaced"
INVALID = "InvalidModuleSpec"
BASE_DOWN = "BaseNotReady"
BASE_GONE = "BaseGone"
TERMINATING = "PodTerminating"
INSTALL_FAILED = "InstallFailed"
VERSION_MISMATCH = "ModuleVersionMismatch"
WEB_CONTEXT_IN_USE = "WebContextPathInUse"
BROKEN = "ModuleBroken"
SHARED_INSTANCE = "SharedModuleInstance"
