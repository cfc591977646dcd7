-- sluice.digest: SHA-256 hex through one reused libcrypto context. The
-- vectors are FIPS 180-2's; a reused context must not leak state from one
-- hash into the next.
local digest = require("sluice.digest")

describe("sluice.digest", function()
    it("matches the SHA-256 test vectors", function()
        assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", digest.hex("abc", 64))
        assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", digest.hex("", 64))
        assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            digest.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 64))
    end)

    it("gives the first n digits, 32 by default", function()
        assert.equal("ba7816bf8f01cfea414140de5dae2223", digest.hex("abc"))
        assert.equal("ba7816bf8f01cfe", digest.hex("abc", 15))
    end)

    it("hashes binary input and gives the same answer when called again", function()
        local big = string.rep("\0\255x", 30000)
        local first = digest.hex(big, 64)
        digest.hex("something else")
        assert.equal(first, digest.hex(big, 64))
        assert.not_equal(digest.hex("a\0b"), digest.hex("a\0c"))
    end)
end)
