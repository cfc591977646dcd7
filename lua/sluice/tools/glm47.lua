-- sluice.tools.glm47 — GLM-4.7 calls, the GLM-4.5 form without line breaks (sluice.tools.glm).
return require("sluice.tools.glm").dialect("glm47", "")
