-- sluice.tools.deepseek_v31 — DeepSeek V3.1 calls: V3's section without
-- the `function` type and the code fence:
--   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"location":"Beijing"}
--   <｜tool▁call▁end｜><｜tool▁calls▁end｜>

local section = require("sluice.tools.deepseek_section")

local D = { name = "deepseek_v31", markers = { section.OPEN } }

local function call(body)
    return body:match("^%s*([^<\n]-)%s*<｜tool▁sep｜>(.*)$")
end

function D.parse(s, final)
    return section.parse(s, final, call)
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    return section.render(calls, function(c, args) return c.name .. "<｜tool▁sep｜>" .. args end)
end

return D
