-- Specs for sluice.protocols.gemini_schema: JSON Schema <-> Gemini's
-- OpenAPI subset (the request goldens in gemini_spec cover it in place).

local GS = require("sluice.protocols.gemini_schema")

describe("gemini schema", function()
    it("keeps a schema whose only content is a union, and survives recursive $refs", function()
        local s = GS.to_gemini({ anyOf = { { type = "object", properties = { a = { type = "string" } } },
                                           { type = "object", properties = { b = { type = "integer" } } } } })
        assert.are.equal(2, #s.anyOf)
        local rec = GS.to_gemini({ type = "object", ["$defs"] = { Node = { type = "object",
            properties = { child = { ["$ref"] = "#/$defs/Node" }, v = { type = "string" } } } },
            properties = { root = { ["$ref"] = "#/$defs/Node" } } })
        assert.are.equal("OBJECT", rec.properties.root.type)
        assert.are.equal("STRING", rec.properties.root.properties.v.type)
        assert.are.same({ type = "OBJECT" }, rec.properties.root.properties.child)
    end)

    it("is nil for a function without parameters, and turns Gemini types back into JSON Schema", function()
        assert.is_nil(GS.to_gemini({ type = "object", properties = {} }))
        assert.are.same({ type = "object", properties = { a = { type = { "string", "null" } } } },
            GS.from_gemini({ type = "OBJECT", properties = { a = { type = "STRING", nullable = true } } }))
    end)
end)
