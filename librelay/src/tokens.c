/* tokens: token counting, by a calibrated heuristic or by byte-level BPE over a tiktoken
 * vocabulary. */
#include "relay/tokens.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "tokens_internal.h"
#include "util.h"

/* ---- Unicode classes, for the GPT-2 pre-tokenisation pattern ---- */

/*
 * Code point ranges (above U+007F) of the general categories L* and N*, from Unicode 14.0, as
 * Python's unicodedata gives them (docs/tokens.md shows the generator). The regex engines behind
 * tiktoken use the same classes for \p{L} and \p{N}.
 */
static const uint32_t uni_letters[][2] = {
    {0xAA, 0xAA},       {0xB5, 0xB5},       {0xBA, 0xBA},       {0xC0, 0xD6},
    {0xD8, 0xF6},       {0xF8, 0x2C1},      {0x2C6, 0x2D1},     {0x2E0, 0x2E4},
    {0x2EC, 0x2EC},     {0x2EE, 0x2EE},     {0x370, 0x374},     {0x376, 0x377},
    {0x37A, 0x37D},     {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},
    {0x38C, 0x38C},     {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},
    {0x48A, 0x52F},     {0x531, 0x556},     {0x559, 0x559},     {0x560, 0x588},
    {0x5D0, 0x5EA},     {0x5EF, 0x5F2},     {0x620, 0x64A},     {0x66E, 0x66F},
    {0x671, 0x6D3},     {0x6D5, 0x6D5},     {0x6E5, 0x6E6},     {0x6EE, 0x6EF},
    {0x6FA, 0x6FC},     {0x6FF, 0x6FF},     {0x710, 0x710},     {0x712, 0x72F},
    {0x74D, 0x7A5},     {0x7B1, 0x7B1},     {0x7CA, 0x7EA},     {0x7F4, 0x7F5},
    {0x7FA, 0x7FA},     {0x800, 0x815},     {0x81A, 0x81A},     {0x824, 0x824},
    {0x828, 0x828},     {0x840, 0x858},     {0x860, 0x86A},     {0x870, 0x887},
    {0x889, 0x88E},     {0x8A0, 0x8C9},     {0x904, 0x939},     {0x93D, 0x93D},
    {0x950, 0x950},     {0x958, 0x961},     {0x971, 0x980},     {0x985, 0x98C},
    {0x98F, 0x990},     {0x993, 0x9A8},     {0x9AA, 0x9B0},     {0x9B2, 0x9B2},
    {0x9B6, 0x9B9},     {0x9BD, 0x9BD},     {0x9CE, 0x9CE},     {0x9DC, 0x9DD},
    {0x9DF, 0x9E1},     {0x9F0, 0x9F1},     {0x9FC, 0x9FC},     {0xA05, 0xA0A},
    {0xA0F, 0xA10},     {0xA13, 0xA28},     {0xA2A, 0xA30},     {0xA32, 0xA33},
    {0xA35, 0xA36},     {0xA38, 0xA39},     {0xA59, 0xA5C},     {0xA5E, 0xA5E},
    {0xA72, 0xA74},     {0xA85, 0xA8D},     {0xA8F, 0xA91},     {0xA93, 0xAA8},
    {0xAAA, 0xAB0},     {0xAB2, 0xAB3},     {0xAB5, 0xAB9},     {0xABD, 0xABD},
    {0xAD0, 0xAD0},     {0xAE0, 0xAE1},     {0xAF9, 0xAF9},     {0xB05, 0xB0C},
    {0xB0F, 0xB10},     {0xB13, 0xB28},     {0xB2A, 0xB30},     {0xB32, 0xB33},
    {0xB35, 0xB39},     {0xB3D, 0xB3D},     {0xB5C, 0xB5D},     {0xB5F, 0xB61},
    {0xB71, 0xB71},     {0xB83, 0xB83},     {0xB85, 0xB8A},     {0xB8E, 0xB90},
    {0xB92, 0xB95},     {0xB99, 0xB9A},     {0xB9C, 0xB9C},     {0xB9E, 0xB9F},
    {0xBA3, 0xBA4},     {0xBA8, 0xBAA},     {0xBAE, 0xBB9},     {0xBD0, 0xBD0},
    {0xC05, 0xC0C},     {0xC0E, 0xC10},     {0xC12, 0xC28},     {0xC2A, 0xC39},
    {0xC3D, 0xC3D},     {0xC58, 0xC5A},     {0xC5D, 0xC5D},     {0xC60, 0xC61},
    {0xC80, 0xC80},     {0xC85, 0xC8C},     {0xC8E, 0xC90},     {0xC92, 0xCA8},
    {0xCAA, 0xCB3},     {0xCB5, 0xCB9},     {0xCBD, 0xCBD},     {0xCDD, 0xCDE},
    {0xCE0, 0xCE1},     {0xCF1, 0xCF2},     {0xD04, 0xD0C},     {0xD0E, 0xD10},
    {0xD12, 0xD3A},     {0xD3D, 0xD3D},     {0xD4E, 0xD4E},     {0xD54, 0xD56},
    {0xD5F, 0xD61},     {0xD7A, 0xD7F},     {0xD85, 0xD96},     {0xD9A, 0xDB1},
    {0xDB3, 0xDBB},     {0xDBD, 0xDBD},     {0xDC0, 0xDC6},     {0xE01, 0xE30},
    {0xE32, 0xE33},     {0xE40, 0xE46},     {0xE81, 0xE82},     {0xE84, 0xE84},
    {0xE86, 0xE8A},     {0xE8C, 0xEA3},     {0xEA5, 0xEA5},     {0xEA7, 0xEB0},
    {0xEB2, 0xEB3},     {0xEBD, 0xEBD},     {0xEC0, 0xEC4},     {0xEC6, 0xEC6},
    {0xEDC, 0xEDF},     {0xF00, 0xF00},     {0xF40, 0xF47},     {0xF49, 0xF6C},
    {0xF88, 0xF8C},     {0x1000, 0x102A},   {0x103F, 0x103F},   {0x1050, 0x1055},
    {0x105A, 0x105D},   {0x1061, 0x1061},   {0x1065, 0x1066},   {0x106E, 0x1070},
    {0x1075, 0x1081},   {0x108E, 0x108E},   {0x10A0, 0x10C5},   {0x10C7, 0x10C7},
    {0x10CD, 0x10CD},   {0x10D0, 0x10FA},   {0x10FC, 0x1248},   {0x124A, 0x124D},
    {0x1250, 0x1256},   {0x1258, 0x1258},   {0x125A, 0x125D},   {0x1260, 0x1288},
    {0x128A, 0x128D},   {0x1290, 0x12B0},   {0x12B2, 0x12B5},   {0x12B8, 0x12BE},
    {0x12C0, 0x12C0},   {0x12C2, 0x12C5},   {0x12C8, 0x12D6},   {0x12D8, 0x1310},
    {0x1312, 0x1315},   {0x1318, 0x135A},   {0x1380, 0x138F},   {0x13A0, 0x13F5},
    {0x13F8, 0x13FD},   {0x1401, 0x166C},   {0x166F, 0x167F},   {0x1681, 0x169A},
    {0x16A0, 0x16EA},   {0x16F1, 0x16F8},   {0x1700, 0x1711},   {0x171F, 0x1731},
    {0x1740, 0x1751},   {0x1760, 0x176C},   {0x176E, 0x1770},   {0x1780, 0x17B3},
    {0x17D7, 0x17D7},   {0x17DC, 0x17DC},   {0x1820, 0x1878},   {0x1880, 0x1884},
    {0x1887, 0x18A8},   {0x18AA, 0x18AA},   {0x18B0, 0x18F5},   {0x1900, 0x191E},
    {0x1950, 0x196D},   {0x1970, 0x1974},   {0x1980, 0x19AB},   {0x19B0, 0x19C9},
    {0x1A00, 0x1A16},   {0x1A20, 0x1A54},   {0x1AA7, 0x1AA7},   {0x1B05, 0x1B33},
    {0x1B45, 0x1B4C},   {0x1B83, 0x1BA0},   {0x1BAE, 0x1BAF},   {0x1BBA, 0x1BE5},
    {0x1C00, 0x1C23},   {0x1C4D, 0x1C4F},   {0x1C5A, 0x1C7D},   {0x1C80, 0x1C88},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1CE9, 0x1CEC},   {0x1CEE, 0x1CF3},
    {0x1CF5, 0x1CF6},   {0x1CFA, 0x1CFA},   {0x1D00, 0x1DBF},   {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},
    {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},
    {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},   {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2071, 0x2071},   {0x207F, 0x207F},
    {0x2090, 0x209C},   {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},
    {0x2115, 0x2115},   {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},
    {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2CE4},
    {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0x2D00, 0x2D25},   {0x2D27, 0x2D27},
    {0x2D2D, 0x2D2D},   {0x2D30, 0x2D67},   {0x2D6F, 0x2D6F},   {0x2D80, 0x2D96},
    {0x2DA0, 0x2DA6},   {0x2DA8, 0x2DAE},   {0x2DB0, 0x2DB6},   {0x2DB8, 0x2DBE},
    {0x2DC0, 0x2DC6},   {0x2DC8, 0x2DCE},   {0x2DD0, 0x2DD6},   {0x2DD8, 0x2DDE},
    {0x2E2F, 0x2E2F},   {0x3005, 0x3006},   {0x3031, 0x3035},   {0x303B, 0x303C},
    {0x3041, 0x3096},   {0x309D, 0x309F},   {0x30A1, 0x30FA},   {0x30FC, 0x30FF},
    {0x3105, 0x312F},   {0x3131, 0x318E},   {0x31A0, 0x31BF},   {0x31F0, 0x31FF},
    {0x3400, 0x4DBF},   {0x4E00, 0xA48C},   {0xA4D0, 0xA4FD},   {0xA500, 0xA60C},
    {0xA610, 0xA61F},   {0xA62A, 0xA62B},   {0xA640, 0xA66E},   {0xA67F, 0xA69D},
    {0xA6A0, 0xA6E5},   {0xA717, 0xA71F},   {0xA722, 0xA788},   {0xA78B, 0xA7CA},
    {0xA7D0, 0xA7D1},   {0xA7D3, 0xA7D3},   {0xA7D5, 0xA7D9},   {0xA7F2, 0xA801},
    {0xA803, 0xA805},   {0xA807, 0xA80A},   {0xA80C, 0xA822},   {0xA840, 0xA873},
    {0xA882, 0xA8B3},   {0xA8F2, 0xA8F7},   {0xA8FB, 0xA8FB},   {0xA8FD, 0xA8FE},
    {0xA90A, 0xA925},   {0xA930, 0xA946},   {0xA960, 0xA97C},   {0xA984, 0xA9B2},
    {0xA9CF, 0xA9CF},   {0xA9E0, 0xA9E4},   {0xA9E6, 0xA9EF},   {0xA9FA, 0xA9FE},
    {0xAA00, 0xAA28},   {0xAA40, 0xAA42},   {0xAA44, 0xAA4B},   {0xAA60, 0xAA76},
    {0xAA7A, 0xAA7A},   {0xAA7E, 0xAAAF},   {0xAAB1, 0xAAB1},   {0xAAB5, 0xAAB6},
    {0xAAB9, 0xAABD},   {0xAAC0, 0xAAC0},   {0xAAC2, 0xAAC2},   {0xAADB, 0xAADD},
    {0xAAE0, 0xAAEA},   {0xAAF2, 0xAAF4},   {0xAB01, 0xAB06},   {0xAB09, 0xAB0E},
    {0xAB11, 0xAB16},   {0xAB20, 0xAB26},   {0xAB28, 0xAB2E},   {0xAB30, 0xAB5A},
    {0xAB5C, 0xAB69},   {0xAB70, 0xABE2},   {0xAC00, 0xD7A3},   {0xD7B0, 0xD7C6},
    {0xD7CB, 0xD7FB},   {0xF900, 0xFA6D},   {0xFA70, 0xFAD9},   {0xFB00, 0xFB06},
    {0xFB13, 0xFB17},   {0xFB1D, 0xFB1D},   {0xFB1F, 0xFB28},   {0xFB2A, 0xFB36},
    {0xFB38, 0xFB3C},   {0xFB3E, 0xFB3E},   {0xFB40, 0xFB41},   {0xFB43, 0xFB44},
    {0xFB46, 0xFBB1},   {0xFBD3, 0xFD3D},   {0xFD50, 0xFD8F},   {0xFD92, 0xFDC7},
    {0xFDF0, 0xFDFB},   {0xFE70, 0xFE74},   {0xFE76, 0xFEFC},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0xFF66, 0xFFBE},   {0xFFC2, 0xFFC7},   {0xFFCA, 0xFFCF},
    {0xFFD2, 0xFFD7},   {0xFFDA, 0xFFDC},   {0x10000, 0x1000B}, {0x1000D, 0x10026},
    {0x10028, 0x1003A}, {0x1003C, 0x1003D}, {0x1003F, 0x1004D}, {0x10050, 0x1005D},
    {0x10080, 0x100FA}, {0x10280, 0x1029C}, {0x102A0, 0x102D0}, {0x10300, 0x1031F},
    {0x1032D, 0x10340}, {0x10342, 0x10349}, {0x10350, 0x10375}, {0x10380, 0x1039D},
    {0x103A0, 0x103C3}, {0x103C8, 0x103CF}, {0x10400, 0x1049D}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10500, 0x10527}, {0x10530, 0x10563}, {0x10570, 0x1057A},
    {0x1057C, 0x1058A}, {0x1058C, 0x10592}, {0x10594, 0x10595}, {0x10597, 0x105A1},
    {0x105A3, 0x105B1}, {0x105B3, 0x105B9}, {0x105BB, 0x105BC}, {0x10600, 0x10736},
    {0x10740, 0x10755}, {0x10760, 0x10767}, {0x10780, 0x10785}, {0x10787, 0x107B0},
    {0x107B2, 0x107BA}, {0x10800, 0x10805}, {0x10808, 0x10808}, {0x1080A, 0x10835},
    {0x10837, 0x10838}, {0x1083C, 0x1083C}, {0x1083F, 0x10855}, {0x10860, 0x10876},
    {0x10880, 0x1089E}, {0x108E0, 0x108F2}, {0x108F4, 0x108F5}, {0x10900, 0x10915},
    {0x10920, 0x10939}, {0x10980, 0x109B7}, {0x109BE, 0x109BF}, {0x10A00, 0x10A00},
    {0x10A10, 0x10A13}, {0x10A15, 0x10A17}, {0x10A19, 0x10A35}, {0x10A60, 0x10A7C},
    {0x10A80, 0x10A9C}, {0x10AC0, 0x10AC7}, {0x10AC9, 0x10AE4}, {0x10B00, 0x10B35},
    {0x10B40, 0x10B55}, {0x10B60, 0x10B72}, {0x10B80, 0x10B91}, {0x10C00, 0x10C48},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x10D00, 0x10D23}, {0x10E80, 0x10EA9},
    {0x10EB0, 0x10EB1}, {0x10F00, 0x10F1C}, {0x10F27, 0x10F27}, {0x10F30, 0x10F45},
    {0x10F70, 0x10F81}, {0x10FB0, 0x10FC4}, {0x10FE0, 0x10FF6}, {0x11003, 0x11037},
    {0x11071, 0x11072}, {0x11075, 0x11075}, {0x11083, 0x110AF}, {0x110D0, 0x110E8},
    {0x11103, 0x11126}, {0x11144, 0x11144}, {0x11147, 0x11147}, {0x11150, 0x11172},
    {0x11176, 0x11176}, {0x11183, 0x111B2}, {0x111C1, 0x111C4}, {0x111DA, 0x111DA},
    {0x111DC, 0x111DC}, {0x11200, 0x11211}, {0x11213, 0x1122B}, {0x11280, 0x11286},
    {0x11288, 0x11288}, {0x1128A, 0x1128D}, {0x1128F, 0x1129D}, {0x1129F, 0x112A8},
    {0x112B0, 0x112DE}, {0x11305, 0x1130C}, {0x1130F, 0x11310}, {0x11313, 0x11328},
    {0x1132A, 0x11330}, {0x11332, 0x11333}, {0x11335, 0x11339}, {0x1133D, 0x1133D},
    {0x11350, 0x11350}, {0x1135D, 0x11361}, {0x11400, 0x11434}, {0x11447, 0x1144A},
    {0x1145F, 0x11461}, {0x11480, 0x114AF}, {0x114C4, 0x114C5}, {0x114C7, 0x114C7},
    {0x11580, 0x115AE}, {0x115D8, 0x115DB}, {0x11600, 0x1162F}, {0x11644, 0x11644},
    {0x11680, 0x116AA}, {0x116B8, 0x116B8}, {0x11700, 0x1171A}, {0x11740, 0x11746},
    {0x11800, 0x1182B}, {0x118A0, 0x118DF}, {0x118FF, 0x11906}, {0x11909, 0x11909},
    {0x1190C, 0x11913}, {0x11915, 0x11916}, {0x11918, 0x1192F}, {0x1193F, 0x1193F},
    {0x11941, 0x11941}, {0x119A0, 0x119A7}, {0x119AA, 0x119D0}, {0x119E1, 0x119E1},
    {0x119E3, 0x119E3}, {0x11A00, 0x11A00}, {0x11A0B, 0x11A32}, {0x11A3A, 0x11A3A},
    {0x11A50, 0x11A50}, {0x11A5C, 0x11A89}, {0x11A9D, 0x11A9D}, {0x11AB0, 0x11AF8},
    {0x11C00, 0x11C08}, {0x11C0A, 0x11C2E}, {0x11C40, 0x11C40}, {0x11C72, 0x11C8F},
    {0x11D00, 0x11D06}, {0x11D08, 0x11D09}, {0x11D0B, 0x11D30}, {0x11D46, 0x11D46},
    {0x11D60, 0x11D65}, {0x11D67, 0x11D68}, {0x11D6A, 0x11D89}, {0x11D98, 0x11D98},
    {0x11EE0, 0x11EF2}, {0x11FB0, 0x11FB0}, {0x12000, 0x12399}, {0x12480, 0x12543},
    {0x12F90, 0x12FF0}, {0x13000, 0x1342E}, {0x14400, 0x14646}, {0x16800, 0x16A38},
    {0x16A40, 0x16A5E}, {0x16A70, 0x16ABE}, {0x16AD0, 0x16AED}, {0x16B00, 0x16B2F},
    {0x16B40, 0x16B43}, {0x16B63, 0x16B77}, {0x16B7D, 0x16B8F}, {0x16E40, 0x16E7F},
    {0x16F00, 0x16F4A}, {0x16F50, 0x16F50}, {0x16F93, 0x16F9F}, {0x16FE0, 0x16FE1},
    {0x16FE3, 0x16FE3}, {0x17000, 0x187F7}, {0x18800, 0x18CD5}, {0x18D00, 0x18D08},
    {0x1AFF0, 0x1AFF3}, {0x1AFF5, 0x1AFFB}, {0x1AFFD, 0x1AFFE}, {0x1B000, 0x1B122},
    {0x1B150, 0x1B152}, {0x1B164, 0x1B167}, {0x1B170, 0x1B2FB}, {0x1BC00, 0x1BC6A},
    {0x1BC70, 0x1BC7C}, {0x1BC80, 0x1BC88}, {0x1BC90, 0x1BC99}, {0x1D400, 0x1D454},
    {0x1D456, 0x1D49C}, {0x1D49E, 0x1D49F}, {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6},
    {0x1D4A9, 0x1D4AC}, {0x1D4AE, 0x1D4B9}, {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3},
    {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A}, {0x1D50D, 0x1D514}, {0x1D516, 0x1D51C},
    {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E}, {0x1D540, 0x1D544}, {0x1D546, 0x1D546},
    {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5}, {0x1D6A8, 0x1D6C0}, {0x1D6C2, 0x1D6DA},
    {0x1D6DC, 0x1D6FA}, {0x1D6FC, 0x1D714}, {0x1D716, 0x1D734}, {0x1D736, 0x1D74E},
    {0x1D750, 0x1D76E}, {0x1D770, 0x1D788}, {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2},
    {0x1D7C4, 0x1D7CB}, {0x1DF00, 0x1DF1E}, {0x1E100, 0x1E12C}, {0x1E137, 0x1E13D},
    {0x1E14E, 0x1E14E}, {0x1E290, 0x1E2AD}, {0x1E2C0, 0x1E2EB}, {0x1E7E0, 0x1E7E6},
    {0x1E7E8, 0x1E7EB}, {0x1E7ED, 0x1E7EE}, {0x1E7F0, 0x1E7FE}, {0x1E800, 0x1E8C4},
    {0x1E900, 0x1E943}, {0x1E94B, 0x1E94B}, {0x1EE00, 0x1EE03}, {0x1EE05, 0x1EE1F},
    {0x1EE21, 0x1EE22}, {0x1EE24, 0x1EE24}, {0x1EE27, 0x1EE27}, {0x1EE29, 0x1EE32},
    {0x1EE34, 0x1EE37}, {0x1EE39, 0x1EE39}, {0x1EE3B, 0x1EE3B}, {0x1EE42, 0x1EE42},
    {0x1EE47, 0x1EE47}, {0x1EE49, 0x1EE49}, {0x1EE4B, 0x1EE4B}, {0x1EE4D, 0x1EE4F},
    {0x1EE51, 0x1EE52}, {0x1EE54, 0x1EE54}, {0x1EE57, 0x1EE57}, {0x1EE59, 0x1EE59},
    {0x1EE5B, 0x1EE5B}, {0x1EE5D, 0x1EE5D}, {0x1EE5F, 0x1EE5F}, {0x1EE61, 0x1EE62},
    {0x1EE64, 0x1EE64}, {0x1EE67, 0x1EE6A}, {0x1EE6C, 0x1EE72}, {0x1EE74, 0x1EE77},
    {0x1EE79, 0x1EE7C}, {0x1EE7E, 0x1EE7E}, {0x1EE80, 0x1EE89}, {0x1EE8B, 0x1EE9B},
    {0x1EEA1, 0x1EEA3}, {0x1EEA5, 0x1EEA9}, {0x1EEAB, 0x1EEBB}, {0x20000, 0x2A6DF},
    {0x2A700, 0x2B738}, {0x2B740, 0x2B81D}, {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0},
    {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},
};
static const uint32_t uni_numbers[][2] = {
    {0xB2, 0xB3},       {0xB9, 0xB9},       {0xBC, 0xBE},       {0x660, 0x669},
    {0x6F0, 0x6F9},     {0x7C0, 0x7C9},     {0x966, 0x96F},     {0x9E6, 0x9EF},
    {0x9F4, 0x9F9},     {0xA66, 0xA6F},     {0xAE6, 0xAEF},     {0xB66, 0xB6F},
    {0xB72, 0xB77},     {0xBE6, 0xBF2},     {0xC66, 0xC6F},     {0xC78, 0xC7E},
    {0xCE6, 0xCEF},     {0xD58, 0xD5E},     {0xD66, 0xD78},     {0xDE6, 0xDEF},
    {0xE50, 0xE59},     {0xED0, 0xED9},     {0xF20, 0xF33},     {0x1040, 0x1049},
    {0x1090, 0x1099},   {0x1369, 0x137C},   {0x16EE, 0x16F0},   {0x17E0, 0x17E9},
    {0x17F0, 0x17F9},   {0x1810, 0x1819},   {0x1946, 0x194F},   {0x19D0, 0x19DA},
    {0x1A80, 0x1A89},   {0x1A90, 0x1A99},   {0x1B50, 0x1B59},   {0x1BB0, 0x1BB9},
    {0x1C40, 0x1C49},   {0x1C50, 0x1C59},   {0x2070, 0x2070},   {0x2074, 0x2079},
    {0x2080, 0x2089},   {0x2150, 0x2182},   {0x2185, 0x2189},   {0x2460, 0x249B},
    {0x24EA, 0x24FF},   {0x2776, 0x2793},   {0x2CFD, 0x2CFD},   {0x3007, 0x3007},
    {0x3021, 0x3029},   {0x3038, 0x303A},   {0x3192, 0x3195},   {0x3220, 0x3229},
    {0x3248, 0x324F},   {0x3251, 0x325F},   {0x3280, 0x3289},   {0x32B1, 0x32BF},
    {0xA620, 0xA629},   {0xA6E6, 0xA6EF},   {0xA830, 0xA835},   {0xA8D0, 0xA8D9},
    {0xA900, 0xA909},   {0xA9D0, 0xA9D9},   {0xA9F0, 0xA9F9},   {0xAA50, 0xAA59},
    {0xABF0, 0xABF9},   {0xFF10, 0xFF19},   {0x10107, 0x10133}, {0x10140, 0x10178},
    {0x1018A, 0x1018B}, {0x102E1, 0x102FB}, {0x10320, 0x10323}, {0x10341, 0x10341},
    {0x1034A, 0x1034A}, {0x103D1, 0x103D5}, {0x104A0, 0x104A9}, {0x10858, 0x1085F},
    {0x10879, 0x1087F}, {0x108A7, 0x108AF}, {0x108FB, 0x108FF}, {0x10916, 0x1091B},
    {0x109BC, 0x109BD}, {0x109C0, 0x109CF}, {0x109D2, 0x109FF}, {0x10A40, 0x10A48},
    {0x10A7D, 0x10A7E}, {0x10A9D, 0x10A9F}, {0x10AEB, 0x10AEF}, {0x10B58, 0x10B5F},
    {0x10B78, 0x10B7F}, {0x10BA9, 0x10BAF}, {0x10CFA, 0x10CFF}, {0x10D30, 0x10D39},
    {0x10E60, 0x10E7E}, {0x10F1D, 0x10F26}, {0x10F51, 0x10F54}, {0x10FC5, 0x10FCB},
    {0x11052, 0x1106F}, {0x110F0, 0x110F9}, {0x11136, 0x1113F}, {0x111D0, 0x111D9},
    {0x111E1, 0x111F4}, {0x112F0, 0x112F9}, {0x11450, 0x11459}, {0x114D0, 0x114D9},
    {0x11650, 0x11659}, {0x116C0, 0x116C9}, {0x11730, 0x1173B}, {0x118E0, 0x118F2},
    {0x11950, 0x11959}, {0x11C50, 0x11C6C}, {0x11D50, 0x11D59}, {0x11DA0, 0x11DA9},
    {0x11FC0, 0x11FD4}, {0x12400, 0x1246E}, {0x16A60, 0x16A69}, {0x16AC0, 0x16AC9},
    {0x16B50, 0x16B59}, {0x16B5B, 0x16B61}, {0x16E80, 0x16E96}, {0x1D2E0, 0x1D2F3},
    {0x1D360, 0x1D378}, {0x1D7CE, 0x1D7FF}, {0x1E140, 0x1E149}, {0x1E2F0, 0x1E2F9},
    {0x1E8C7, 0x1E8CF}, {0x1E950, 0x1E959}, {0x1EC71, 0x1ECAB}, {0x1ECAD, 0x1ECAF},
    {0x1ECB1, 0x1ECB4}, {0x1ED01, 0x1ED2D}, {0x1ED2F, 0x1ED3D}, {0x1F100, 0x1F10C},
    {0x1FBF0, 0x1FBF9},
};

enum cls { C_WS, C_L, C_N, C_O };

static int in_ranges(uint32_t cp, const uint32_t (*r)[2], size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* Unicode White_Space, what \s matches in tiktoken's regex. */
static int is_space_cp(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* An ASCII byte's class, with no decoding: most of what clients send is ASCII. */
static inline enum cls ascii_cls(unsigned char b)
{
    if (b == ' ' || (b >= 0x09 && b <= 0x0D))
        return C_WS;
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z')
        return C_L;
    return b >= '0' && b <= '9' ? C_N : C_O;
}

static enum cls classify(uint32_t cp)
{
    if (cp < 0x80)
        return ascii_cls((unsigned char)cp);
    if (is_space_cp(cp))
        return C_WS;
    if (in_ranges(cp, uni_letters, sizeof(uni_letters) / sizeof(uni_letters[0])))
        return C_L;
    if (in_ranges(cp, uni_numbers, sizeof(uni_numbers) / sizeof(uni_numbers[0])))
        return C_N;
    return C_O;
}

/* Decodes one code point at s[0..n); invalid or truncated UTF-8 gives one byte, U+FFFD. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len = relay_utf8_decode(s, n, cp);
    if (len)
        return len;
    *cp = 0xFFFD;
    return 1;
}

/* A piece of text as the pre-tokeniser cuts it; BPE never merges across pieces. */
typedef struct piece {
    size_t end;   /* byte offset just past the piece */
    enum cls cls; /* C_WS, C_L, C_N or C_O (contractions are C_L) */
    size_t chars; /* code points, a leading space excluded */
    int ascii;    /* every code point is ASCII */
    int cjk;      /* contains Han, kana or Hangul */
} piece_t;

static int is_cjk(uint32_t cp)
{
    return (cp >= 0x2E80 && cp <= 0x9FFF) || (cp >= 0xAC00 && cp <= 0xD7AF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFF00 && cp <= 0xFFEF) ||
           (cp >= 0x20000 && cp <= 0x3FFFF);
}

/* Extends a run of class c from byte q; fills the piece's statistics. */
static void run_of(piece_t *pc, const unsigned char *s, size_t len, size_t q, enum cls c)
{
    pc->cls = c;
    while (q < len) {
        if (s[q] < 0x80) { /* the same steps as below, for a byte that is its own code point */
            if (ascii_cls(s[q]) != c)
                break;
            pc->chars++;
            q++;
            continue;
        }
        uint32_t cp;
        size_t k = utf8_next(s + q, len - q, &cp);
        if (classify(cp) != c)
            break;
        pc->chars++;
        pc->ascii &= cp < 0x80;
        pc->cjk |= is_cjk(cp);
        q += k;
    }
    pc->end = q;
}

static size_t contraction(const unsigned char *s, size_t n)
{
    static const char *const forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        size_t k = strlen(forms[i]);
        if (n >= k && !memcmp(s, forms[i], k))
            return k;
    }
    return 0;
}

/*
 * The piece starting at byte p, per the GPT-2 pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * written out by hand: a regex engine with \p{..} and look-ahead is more than we need.
 */
static void next_piece(piece_t *pc, const unsigned char *s, size_t len, size_t p)
{
    memset(pc, 0, sizeof(*pc));
    pc->ascii = 1;
    size_t k;
    if (s[p] == '\'' && (k = contraction(s + p + 1, len - p - 1)) > 0) {
        pc->end = p + 1 + k;
        pc->cls = C_L;
        pc->chars = 1 + k;
        return;
    }
    uint32_t cp;
    if (s[p] == ' ' && p + 1 < len) {
        utf8_next(s + p + 1, len - p - 1, &cp);
        enum cls c = classify(cp);
        if (c != C_WS) {
            run_of(pc, s, len, p + 1, c);
            return;
        }
    }
    size_t n0 = utf8_next(s + p, len - p, &cp);
    enum cls c = classify(cp);
    if (c != C_WS) {
        run_of(pc, s, len, p, c);
        return;
    }
    /* Whitespace: all of it at the end of text; else all but its last character, which then
     * stands alone or, when it is a space, leads the next piece (\s+(?!\S) before \s+). */
    size_t q = p, last = p;
    size_t chars = 0;
    while (q < len) {
        size_t kk = utf8_next(s + q, len - q, &cp);
        if (classify(cp) != C_WS)
            break;
        last = q;
        q += kk;
        chars++;
    }
    pc->cls = C_WS;
    pc->ascii = 1;
    if (q == len || chars == 1) {
        pc->end = q;
        pc->chars = chars;
    } else {
        pc->end = last;
        pc->chars = chars - 1;
    }
    (void)n0;
}

/* ---- the heuristic ---- */

/*
 * Each piece costs by its kind and its length in code points, in hundredths of a token. The
 * tables are the mean BPE token counts per (kind, length) measured with Anthropic's published
 * Claude vocabulary over a training corpus, made non-decreasing in length (docs/tokens.md).
 */
enum hkind {
    H_SPACE,
    H_NEWLINE,
    H_WORD,
    H_LATIN,
    H_GREEK,
    H_CYRILLIC,
    H_ALPHA,
    H_CJK,
    H_NUM,
    H_PUNCT,
    H_SYMBOL,
    H_KINDS
};

#define H_MAXLEN 16
typedef struct cost_row {
    uint16_t by_len[H_MAXLEN + 1]; /* [n] for n code points, n <= H_MAXLEN; [0] unused */
    uint16_t extra;                /* per code point past H_MAXLEN */
} cost_row_t;

static const cost_row_t heur_costs[H_KINDS] = {
    [H_SPACE] = {{0, 100, 102, 102, 167, 167, 211, 211, 211, 242, 314, 385, 456, 527, 599, 670,
                  741},
                 71},
    [H_NEWLINE] = {{0, 100, 100, 100, 100, 106, 106, 116, 116, 143, 143, 143, 143, 143, 143, 143,
                    143},
                   5},
    [H_WORD] = {{0, 100, 100, 103, 105, 116, 116, 118, 120, 122, 129, 130, 131, 167, 171, 188, 211},
                21},
    [H_LATIN] = {{0, 100, 124, 130, 136, 260, 277, 292, 315, 315, 315, 315, 408, 450, 491, 532,
                  574},
                 41},
    [H_GREEK] = {{0, 191, 248, 384, 586, 717, 819, 932, 1100, 1184, 1294, 1343, 1521, 1538, 1773,
                  1820, 1953},
                 133},
    [H_CYRILLIC] = {{0, 101, 120, 170, 266, 300, 341, 414, 444, 464, 533, 545, 582, 613, 845, 902,
                     902},
                    57},
    [H_ALPHA] = {{0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400,
                  1500, 1600},
                 100},
    [H_CJK] = {{0, 198, 287, 394, 436, 522, 646, 646, 678, 780, 874, 916, 1003, 1104, 1156, 1363,
                1385},
               84},
    [H_NUM] = {{0, 100, 100, 109, 109, 176, 251, 327, 402, 478, 554, 629, 705, 780, 856, 932, 1007},
               76},
    [H_PUNCT] = {{0, 100, 101, 158, 185, 197, 257, 317, 377, 437, 497, 557, 617, 677, 737, 797,
                  857},
                 5},
    [H_SYMBOL] = {{0, 204, 278, 278, 415, 603, 791, 979, 1167, 1355, 1543, 1731, 1919, 2107, 2295,
                   2483, 2671},
                  188},
};

/* The script of a non-ASCII, non-CJK letter piece, by its first non-ASCII code point. */
static enum hkind letter_script(const unsigned char *s, size_t a, size_t b)
{
    for (size_t q = a; q < b;) {
        uint32_t cp;
        q += utf8_next(s + q, b - q, &cp);
        if (cp < 0x80)
            continue;
        if (cp < 0x250 || (cp >= 0x1E00 && cp <= 0x1EFF))
            return H_LATIN;
        if ((cp >= 0x370 && cp <= 0x3FF) || (cp >= 0x1F00 && cp <= 0x1FFF))
            return H_GREEK;
        if (cp >= 0x400 && cp <= 0x52F)
            return H_CYRILLIC;
        return H_ALPHA;
    }
    return H_WORD;
}

static enum hkind piece_kind(const piece_t *pc, const unsigned char *s, size_t start)
{
    switch (pc->cls) {
    case C_WS:
        return memchr(s + start, '\n', pc->end - start) ? H_NEWLINE : H_SPACE;
    case C_N:
        return H_NUM;
    case C_O:
        return pc->ascii ? H_PUNCT : H_SYMBOL;
    case C_L:
    default:
        if (pc->ascii)
            return H_WORD;
        if (pc->cjk)
            return H_CJK;
        return letter_script(s, start, pc->end);
    }
}

static int64_t piece_cost(enum hkind k, size_t chars)
{
    const cost_row_t *row = &heur_costs[k];
    if (chars == 0)
        return 0;
    if (chars <= H_MAXLEN)
        return row->by_len[chars];
    return row->by_len[H_MAXLEN] + (int64_t)(chars - H_MAXLEN) * row->extra;
}

static int64_t heuristic_count(const unsigned char *s, size_t len)
{
    int64_t centi = 0;
    piece_t pc;
    for (size_t p = 0; p < len; p = pc.end) {
        next_piece(&pc, s, len, p);
        centi += piece_cost(piece_kind(&pc, s, p), pc.chars);
    }
    int64_t n = (centi + 50) / 100;
    return len && n == 0 ? 1 : n;
}

/* ---- the BPE vocabulary: an open-addressing table from token bytes to rank ---- */

typedef struct vocab_slot {
    uint32_t off, len; /* the token's bytes in the arena; len 0 marks an empty slot */
    int32_t rank;
} vocab_slot_t;

struct relay_tokenizer {
    vocab_slot_t *slots;
    size_t mask; /* slots - 1, a power of two minus one */
    size_t count;
    relay_buf_t arena; /* all token bytes, back to back */
};

static uint64_t hash_bytes(const unsigned char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static int32_t vocab_rank(const relay_tokenizer_t *t, const unsigned char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->mask;
    for (;; i = (i + 1) & t->mask) {
        const vocab_slot_t *v = &t->slots[i];
        if (!v->len)
            return -1;
        if (v->len == n && !memcmp(t->arena.data + v->off, s, n))
            return v->rank;
    }
}

static int vocab_grow(relay_tokenizer_t *t)
{
    size_t n = t->slots ? (t->mask + 1) * 2 : 1024;
    vocab_slot_t *ns = calloc(n, sizeof(*ns));
    if (!ns)
        return RELAY_ERR_NOMEM;
    for (size_t i = 0; t->slots && i <= t->mask; i++) {
        vocab_slot_t *v = &t->slots[i];
        if (!v->len)
            continue;
        size_t j = hash_bytes((unsigned char *)t->arena.data + v->off, v->len) & (n - 1);
        while (ns[j].len)
            j = (j + 1) & (n - 1);
        ns[j] = *v;
    }
    free(t->slots);
    t->slots = ns;
    t->mask = n - 1;
    return 0;
}

/* 0, RELAY_ERR_CONFLICT for a token already present, or RELAY_ERR_NOMEM / TOO_LARGE. */
static int vocab_add(relay_tokenizer_t *t, const unsigned char *s, size_t n, int32_t rank)
{
    if (!t->slots || (t->count + 1) * 2 > t->mask + 1) {
        int rc = vocab_grow(t);
        if (rc)
            return rc;
    }
    if (vocab_rank(t, s, n) >= 0)
        return RELAY_ERR_CONFLICT;
    size_t off = t->arena.len;
    int rc = relay_buf_append(&t->arena, s, n);
    if (rc)
        return rc;
    size_t i = hash_bytes(s, n) & t->mask;
    while (t->slots[i].len)
        i = (i + 1) & t->mask;
    t->slots[i] = (vocab_slot_t){(uint32_t)off, (uint32_t)n, rank};
    t->count++;
    return 0;
}

/* Standard base64 (tiktoken files use it, with padding); returns the length or -1. */
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0, i = 0;
    for (; i < n && in[i] != '='; i++) {
        const char c = in[i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '+'             ? 62
                : c == '/'             ? 63
                                       : -1;
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    for (; i < n; i++) {
        if (in[i] != '=')
            return -1;
    }
    return o == 0 ? -1 : (long)o;
}

/* Parses one "base64token rank" line into the vocabulary; an error message names what is wrong. */
static int vocab_line(relay_tokenizer_t *t, char *line, size_t n, const char **why)
{
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (n == 0)
        return 0;
    char *sp = memchr(line, ' ', n);
    if (!sp) {
        *why = "expected \"base64token rank\"";
        return RELAY_ERR_CONFIG;
    }
    unsigned char tok[RELAY_TOKENS_MAX_LINE];
    long tl = b64_decode(line, (size_t)(sp - line), tok, sizeof(tok));
    if (tl < 0) {
        *why = "bad base64 token";
        return RELAY_ERR_CONFIG;
    }
    char *e;
    errno = 0;
    long long rank = strtoll(sp + 1, &e, 10);
    if (errno || e == sp + 1 || *e || rank < 0 || rank > INT32_MAX) {
        *why = "bad rank (expected an integer from 0 to 2147483647)";
        return RELAY_ERR_CONFIG;
    }
    int rc = vocab_add(t, tok, (size_t)tl, (int32_t)rank);
    if (rc == RELAY_ERR_CONFLICT)
        *why = "token listed twice";
    else if (rc)
        *why = "out of memory";
    return rc ? RELAY_ERR_CONFIG : 0;
}

static int vocab_load(relay_tokenizer_t *t, const char *path, relay_error_t *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return relay_error_set(err, RELAY_ERR_CONFIG, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        const char *why = NULL;
        lineno++;
        if ((size_t)n > RELAY_TOKENS_MAX_LINE)
            why = "line too long";
        else
            rc = vocab_line(t, line, (size_t)n, &why);
        if (why)
            rc = relay_error_set(err, RELAY_ERR_CONFIG, "%s:%zu: %s", path, lineno, why);
    }
    if (!rc && ferror(f))
        rc = relay_error_set(err, RELAY_ERR_IO, "%s: read error", path);
    if (!rc && t->count == 0)
        rc = relay_error_set(err, RELAY_ERR_CONFIG, "%s: no tokens", path);
    free(line);
    fclose(f);
    return rc;
}

int relay_tokenizer_new(relay_tokenizer_t **out, const char *vocab_path, relay_error_t *err)
{
    *out = NULL;
    relay_tokenizer_t *t = calloc(1, sizeof(*t));
    if (!t)
        return relay_error_set(err, RELAY_ERR_NOMEM, "out of memory");
    relay_buf_init(&t->arena, UINT32_MAX);
    if (vocab_path) {
        int rc = vocab_load(t, vocab_path, err);
        if (rc) {
            relay_tokenizer_free(t);
            return rc;
        }
    }
    *out = t;
    return 0;
}

void relay_tokenizer_free(relay_tokenizer_t *t)
{
    if (!t)
        return;
    free(t->slots);
    relay_buf_free(&t->arena);
    free(t);
}

int relay_tokenizer_is_bpe(const relay_tokenizer_t *t)
{
    return t && t->count > 0;
}

/* ---- byte-level BPE of one piece (tiktoken's merge loop) ---- */

typedef struct bpe_out {
    int32_t *ids;
    size_t cap;
    size_t n;
} bpe_out_t;

static void emit(bpe_out_t *o, int32_t id)
{
    if (o->ids && o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* Rank of the bytes from boundary i to boundary i+2 (i.e. of merging parts i and i+1). */
static int32_t pair_rank(const relay_tokenizer_t *t, const unsigned char *s, const size_t *pos,
                         size_t nparts, size_t i)
{
    if (i + 2 > nparts)
        return -1;
    return vocab_rank(t, s + pos[i], pos[i + 2] - pos[i]);
}

/*
 * Merges the adjacent pair of lowest rank until none is in the vocabulary. pos holds part
 * boundaries (nparts + 1 of them) and rank[i] the rank of merging part i with part i+1 (-1: none).
 */
static void bpe_merge(const relay_tokenizer_t *t, const unsigned char *s, size_t *pos,
                      int32_t *rank, size_t nparts, bpe_out_t *o)
{
    for (size_t i = 0; i < nparts; i++)
        rank[i] = pair_rank(t, s, pos, nparts, i);
    while (nparts > 1) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i + 1 < nparts; i++) {
            if (rank[i] >= 0 && (best == SIZE_MAX || rank[i] < rank[best]))
                best = i;
        }
        if (best == SIZE_MAX)
            break;
        /* Part best+1 disappears: shift boundaries and ranks left by one. */
        memmove(&pos[best + 1], &pos[best + 2], (nparts - best - 1) * sizeof(*pos));
        memmove(&rank[best + 1], &rank[best + 2], (nparts - best - 2) * sizeof(*rank));
        nparts--;
        rank[best] = pair_rank(t, s, pos, nparts, best);
        if (best > 0)
            rank[best - 1] = pair_rank(t, s, pos, nparts, best - 1);
    }
    for (size_t i = 0; i < nparts; i++)
        emit(o, vocab_rank(t, s + pos[i], pos[i + 1] - pos[i]));
}

/*
 * Longer pieces (a run of letters with no space, such as a long hash) are cut into chunks of this
 * many bytes before merging: the merge loop is quadratic, and no real token is this long, so only
 * the tokens at a cut can differ from an uncut merge.
 */
#define BPE_MAX_PIECE 256

static int bpe_piece(const relay_tokenizer_t *t, const unsigned char *s, size_t n, bpe_out_t *o)
{
    while (n > BPE_MAX_PIECE) {
        size_t k = BPE_MAX_PIECE;
        while (k > 1 && (s[k] & 0xC0) == 0x80)
            k--; /* cut on a code point boundary */
        int rc = bpe_piece(t, s, k, o);
        if (rc)
            return rc;
        s += k;
        n -= k;
    }
    int32_t whole = vocab_rank(t, s, n);
    if (whole >= 0) {
        emit(o, whole);
        return 0;
    }
    size_t pos[BPE_MAX_PIECE + 1];
    int32_t rank[BPE_MAX_PIECE];
    for (size_t i = 0; i <= n; i++)
        pos[i] = i;
    bpe_merge(t, s, pos, rank, n, o);
    return 0;
}

static int bpe_encode(const relay_tokenizer_t *t, const unsigned char *s, size_t len, bpe_out_t *o)
{
    piece_t pc;
    for (size_t p = 0; p < len; p = pc.end) {
        next_piece(&pc, s, len, p);
        int rc = bpe_piece(t, s + p, pc.end - p, o);
        if (rc)
            return rc;
    }
    return 0;
}

int relay_tokens_encode(size_t *n, int32_t *ids, size_t cap, const relay_tokenizer_t *t,
                        const char *text, size_t len)
{
    *n = 0;
    if (!relay_tokenizer_is_bpe(t))
        return RELAY_ERR_INVALID;
    bpe_out_t o = {ids, cap, 0};
    int rc = bpe_encode(t, (const unsigned char *)text, len, &o);
    *n = o.n;
    return rc;
}

int64_t relay_tokens_count_text(const relay_tokenizer_t *t, const char *text, size_t len)
{
    if (!text || !len)
        return 0;
    if (relay_tokenizer_is_bpe(t)) {
        bpe_out_t o = {NULL, 0, 0};
        if (bpe_encode(t, (const unsigned char *)text, len, &o) == 0)
            return (int64_t)o.n;
        /* Out of memory on a huge piece: an estimate beats no answer. */
    }
    return heuristic_count((const unsigned char *)text, len);
}

/* ---- Messages request bodies ---- */

static int64_t count_str(const relay_tokenizer_t *t, const json_t *v)
{
    return json_is_string(v)
               ? relay_tokens_count_text(t, json_string_value(v), json_string_length(v))
               : 0;
}

/* The tokens of a JSON value written compactly (tool inputs and schemas). */
static int64_t count_json(const relay_tokenizer_t *t, const json_t *v)
{
    if (!v)
        return 0;
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return 0;
    int64_t n = relay_tokens_count_text(t, s, strlen(s));
    free(s);
    return n;
}

static int64_t count_content(const relay_tokenizer_t *t, const json_t *content);

static int64_t count_block(const relay_tokenizer_t *t, const json_t *b)
{
    const char *type = json_string_value(json_object_get(b, "type"));
    if (!type)
        return count_json(t, b);
    if (!strcmp(type, "text"))
        return count_str(t, json_object_get(b, "text"));
    if (!strcmp(type, "thinking"))
        return count_str(t, json_object_get(b, "thinking"));
    if (!strcmp(type, "redacted_thinking"))
        return count_str(t, json_object_get(b, "data")) / 4;
    if (!strcmp(type, "tool_use") || !strcmp(type, "server_tool_use"))
        return count_str(t, json_object_get(b, "name")) +
               count_json(t, json_object_get(b, "input"));
    if (!strcmp(type, "tool_result"))
        return count_content(t, json_object_get(b, "content"));
    if (!strcmp(type, "image"))
        return REQ_IMAGE_TOKENS;
    if (!strcmp(type, "document")) {
        const json_t *src = json_object_get(b, "source");
        const json_t *data = json_object_get(src, "data");
        const char *st = json_string_value(json_object_get(src, "type"));
        if (st && !strcmp(st, "base64"))
            return (int64_t)(json_string_length(data) * 3 / 4) / REQ_PDF_BYTES_PER_TOK;
        if (st && !strcmp(st, "content"))
            return count_content(t, json_object_get(src, "content"));
        return count_str(t, data);
    }
    return count_json(t, b);
}

/* A content field: a string, or an array of blocks. */
static int64_t count_content(const relay_tokenizer_t *t, const json_t *content)
{
    if (json_is_string(content))
        return count_str(t, content);
    int64_t n = 0;
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b) n += count_block(t, b);
    return n;
}

static int64_t count_tools(const relay_tokenizer_t *t, const json_t *tools, const json_t *choice)
{
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return 0;
    const char *ct = json_string_value(json_object_get(choice, "type"));
    int forced = ct && (!strcmp(ct, "any") || !strcmp(ct, "tool"));
    int64_t n = forced ? REQ_TOOL_PROMPT_FORCE : REQ_TOOL_PROMPT_AUTO;
    size_t i;
    const json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        n += REQ_TOOL_TOKENS + count_str(t, json_object_get(tool, "name")) +
             count_str(t, json_object_get(tool, "description")) +
             count_json(t, json_object_get(tool, "input_schema"));
    }
    return n;
}

int relay_tokens_count_request(const relay_tokenizer_t *t, const char *body, size_t len,
                               relay_request_info_t *out)
{
    /* jansson's DOM of a 50 KB body cost more than counting its text (bench_tokens: 885 µs a
     * request against 321 µs for the text alone; callgrind at c=4: 16% of a proxied request in
     * json_loadb for a 300-byte body). The walker answers the usual bodies; jansson the rest. */
    if (relay_tokens_count_request_fast(t, body, len, out))
        return 0;
    return relay_tokens_count_request_jansson(t, body, len, out);
}

int relay_tokens_count_request_jansson(const relay_tokenizer_t *t, const char *body, size_t len,
                                       relay_request_info_t *out)
{
    json_t *root = body ? json_loadb(body, len, 0, NULL) : NULL;
    if (!json_is_object(root)) {
        json_decref(root);
        return RELAY_ERR_INVALID;
    }
    relay_request_info_t info = {0};
    int64_t n = REQ_BASE_TOKENS + count_content(t, json_object_get(root, "system"));
    size_t i;
    const json_t *m;
    json_array_foreach(json_object_get(root, "messages"), i, m)
    {
        n += REQ_MESSAGE_TOKENS + count_content(t, json_object_get(m, "content"));
    }
    n += count_tools(t, json_object_get(root, "tools"), json_object_get(root, "tool_choice"));
    info.input_tokens_estimate = n;
    json_t *mt = json_object_get(root, "max_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0)
        info.max_tokens = json_integer_value(mt);
    info.stream = json_is_true(json_object_get(root, "stream"));
    const char *model = json_string_value(json_object_get(root, "model"));
    if (model)
        relay_strlcpy(info.model, model, sizeof(info.model));
    const char *uid =
        json_string_value(json_object_get(json_object_get(root, "metadata"), "user_id"));
    if (uid)
        relay_strlcpy(info.user_id, uid, sizeof(info.user_id));
    json_decref(root);
    *out = info;
    return 0;
}
