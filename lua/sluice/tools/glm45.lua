-- sluice.tools.glm45 — GLM-4.5/4.6 calls (sluice.tools.glm reads them).
return require("sluice.tools.glm").dialect("glm45", "\n")
