/*
 * A stand-in for Windows' bcryptprimitives.dll, for the smoke test under Debian's wine 8 only
 * (packaging/smoke.sh windows); never shipped. Rust's std takes its random numbers from
 * ProcessPrng in that DLL (Windows 10 and later); wine 8 has no such DLL, so a Rust program
 * there stops before main. This one answers with RtlGenRandom (advapi32's SystemFunction036),
 * which wine implements. Placed beside the .exe, it is found before the system's.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
